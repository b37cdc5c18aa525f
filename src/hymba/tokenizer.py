"""A checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library, plus the special tokens, the
BOS/EOS rule and the chat template of `tokenizer_config.json` (the Hugging Face layout, read and written).

    tok = load_tokenizer("path/to/Hymba-1.5B-Instruct")
    tok.encode("Hello world")                       # [1, 15043, 3186]: BOS added (add_bos_token)
    ids, mask = tok(["a", "longer prompt"])         # batched, left padded, torch tensors
    tok.apply_chat_template(messages, add_generation_prompt=True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import torch
from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as Backend
from tokenizers.processors import TemplateProcessing

from .errors import HymbaError
from .utils import atomic_path, atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TokenizerError(HymbaError, ValueError):
    """A tokenizer directory that cannot be used as it is."""


def _token_content(value: Any, field: str, source: str) -> str | None:
    """Special tokens are written as strings, or as AddedToken dicts ({"content": ..., ...})."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{source}: {field} must be a string or an object with a 'content' string, got {value!r}")


class Tokenizer:
    """Encode, decode, pad a batch and render chat templates. Build it with `load_tokenizer(dir)` or from a
    `tokenizers.Tokenizer` and the special-token strings."""

    def __init__(self, backend, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, add_bos_token: bool | None = None,
                 add_eos_token: bool | None = None, chat_template: str | None = None,
                 config: dict[str, Any] | None = None, source: str = "tokenizer"):
        self.backend = backend
        self.source = source
        self._config = dict(config or {})
        self._tokens = dict(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, unk_token=unk_token)
        self._ids: dict[str, int | None] = {}
        for key, token in self._tokens.items():
            if token is None:
                self._ids[key] = None
                continue
            tid = backend.token_to_id(token)
            if tid is None:
                raise TokenizerError(f"{source}: {key} {token!r} is not in the vocabulary of {TOKENIZER_FILE}")
            self._ids[key] = tid
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))
        self._chat_template = chat_template
        self._compiled_template = None

    def _set_post_processor(self, bos: bool, eos: bool) -> None:
        """Make `encode(add_special_tokens=True)` add exactly what add_bos_token/add_eos_token say, whatever
        tokenizer.json's own post-processor does (the rule transformers applies to Llama tokenizers)."""
        for flag, key in ((bos, "bos_token"), (eos, "eos_token")):
            if flag and self._tokens[key] is None:
                raise TokenizerError(f"{self.source}: add_{key} is true but no {key} is set")
        b = f"{self._tokens['bos_token']}:0 " if bos else ""
        e = f" {self._tokens['eos_token']}:0" if eos else ""
        specials = [(self._tokens[k], self._ids[k]) for k, f in (("bos_token", bos), ("eos_token", eos)) if f]
        pair_b = f" {self._tokens['bos_token']}:1" if bos else ""
        pair_e = f" {self._tokens['eos_token']}:1" if eos else ""
        self.backend.post_processor = TemplateProcessing(
            single=f"{b}$A:0{e}", pair=f"{b}$A:0{e}{pair_b} $B:1{pair_e}", special_tokens=specials)

    # ---- ids and special tokens -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (32001 for Hymba: Llama-2's 32000 + [PAD])."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    bos_token = property(lambda self: self._tokens["bos_token"])
    eos_token = property(lambda self: self._tokens["eos_token"])
    pad_token = property(lambda self: self._tokens["pad_token"])
    unk_token = property(lambda self: self._tokens["unk_token"])
    bos_token_id = property(lambda self: self._ids["bos_token"])
    eos_token_id = property(lambda self: self._ids["eos_token"])
    pad_token_id = property(lambda self: self._ids["pad_token"])
    unk_token_id = property(lambda self: self._ids["unk_token"])

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    # ---- encode / decode --------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def __call__(self, texts: str | Sequence[str], padding_side: str = "left", add_special_tokens: bool = True):
        """Encode a batch and pad it to its longest member: (ids [B, L] int64, attention_mask [B, L] int64).

        Padding uses pad_token (else eos_token); generation needs padding_side="left"."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.encode_batch(texts, add_special_tokens=add_special_tokens)
        if not encoded:
            raise ValueError("no texts to encode")
        pad = self.pad_token_id if self.pad_token_id is not None else self.eos_token_id
        if pad is None and len({len(e) for e in encoded}) > 1:
            raise TokenizerError(f"{self.source}: texts of different lengths need padding, but neither pad_token "
                                 "nor eos_token is set")
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad if pad is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            span = slice(width - len(e), width) if padding_side == "left" else slice(0, len(e))
            ids[i, span] = torch.tensor(e, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    # ---- chat ---------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = False, chat_template: str | None = None, **kwargs: Any):
        """Render `messages` ([{"role": ..., "content": ...}, ...]) with the Jinja chat template.

        Rendering runs in Jinja's sandbox (a template cannot touch Python internals). Extra keyword arguments
        become template variables (e.g. tools=...). With tokenize=True returns ids, encoded without adding
        special tokens (the template writes whatever it wants)."""
        template = chat_template if chat_template is not None else self._chat_template
        if template is None:
            raise TokenizerError(f"{self.source}: no chat_template in {CONFIG_FILE} (a base model?); "
                                 "pass chat_template= or format the prompt yourself")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
        compiled = _compile_template(template) if chat_template is not None else self._template()
        special = {k: v for k, v in self._tokens.items() if v is not None}
        text = compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               **special, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _template(self):
        if self._compiled_template is None:
            self._compiled_template = _compile_template(self._chat_template)
        return self._compiled_template

    # ---- saving -------------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json (loadable here and by transformers' AutoTokenizer).
        Keys of the original tokenizer_config.json that this class does not interpret are kept."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        config = dict(self._config)
        config.update({k: v for k, v in self._tokens.items() if v is not None})
        for key in ("add_bos_token", "add_eos_token"):
            value = getattr(self, key)
            if value is not None:
                config[key] = value
        if self._chat_template is not None:
            config["chat_template"] = self._chat_template
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.setdefault("padding_side", "left")
        config.setdefault("clean_up_tokenization_spaces", False)
        with atomic_path(os.path.join(directory, TOKENIZER_FILE)) as tmp:
            self.backend.save(tmp)
        atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _compile_template(source: str):
    """Jinja2 in a sandbox, with the conventions chat templates are written for (those of transformers):
    trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now` and a `tojson` that keeps
    non-ASCII text."""
    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(value, indent=None):
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise TokenizerError(f"chat_template is not a valid Jinja template: {e}") from None


def read_tokenizer_config(directory: str) -> dict[str, Any]:
    """A directory's tokenizer_config.json ({} when it has none); a damaged one is a TokenizerError naming it."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return config


def special_token_flags(config: dict[str, Any], source: str) -> dict[str, bool | None]:
    """add_bos_token / add_eos_token of a tokenizer config (None: not given), checked to be booleans."""
    flags = {}
    for key in ("add_bos_token", "add_eos_token"):
        value = config.get(key)
        if value is not None and not isinstance(value, bool):
            raise TokenizerError(f"{source}: {key} must be true or false, got {value!r}")
        flags[key] = value
    return flags


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load `tokenizer.json` and `tokenizer_config.json` (optional) from a checkpoint directory."""
    directory = os.fspath(directory)
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isdir(directory):
        raise TokenizerError(f"tokenizer directory {directory} does not exist")
    if not os.path.exists(path):
        raise TokenizerError(f"no {TOKENIZER_FILE} in {directory} (a checkpoint's tokenizer lives beside its "
                                "config.json; SentencePiece-only tokenizer.model files are not read)")
    try:
        backend = Backend.from_file(path)
    except Exception as e:  # the library raises a bare Exception for malformed files
        raise TokenizerError(f"{path} is not a valid tokenizers file: {e}") from None
    config_path = os.path.join(directory, CONFIG_FILE)
    config = read_tokenizer_config(directory)
    tokens = {k: _token_content(config.get(k), k, config_path) for k in SPECIAL_TOKEN_KEYS}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise TokenizerError(f"{config_path}: chat_template is a list of named templates without a 'default' "
                                 f"one (names: {', '.join(map(str, named))})")
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{config_path}: chat_template must be a string")
    flags = special_token_flags(config, config_path)
    return Tokenizer(backend, **tokens, **flags, chat_template=template, config=config, source=directory)
