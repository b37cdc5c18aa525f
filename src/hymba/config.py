"""HymbaConfig: every architectural choice of a Hymba model, the released `config.json` in and out, presets.

Field names are the keys of NVIDIA's released `config.json`, so reading and writing the official file is a
plain mapping. Two keys of our own (`use_attention`, `use_ssm`) express the paper's baselines from the same
code: an attention-only Llama-style transformer and an SSM-only Mamba-style stack.
"""

from __future__ import annotations

import copy
import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import HymbaError
from .utils import atomic_write_text

# Keys the release carries without effect on the computation (see the format document, section 2). They are
# accepted on read and written back with the release's values, so that NVIDIA's own code accepts our files.
INERT_KEYS: dict[str, Any] = {
    "attention_dropout": 0.0,
    "attn_hidden_size": -1,
    "attn_implementation": "flex",
    "attn_implementation_new": "flex",
    "calc_logits_for_entire_prompt": False,
    "hidden_act": "silu",
    "kq_head_dim": -1,
    "kv_reuse_every_i_layer": -1,
    "kv_weight_reuse": False,
    "memory_tokens_interspersed_every": 0,
    "num_experts": 1,
    "num_experts_per_tok": 1,
    "num_mamba": 1,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "use_cache": False,
    "use_mamba_kernels": True,
    "seq_length": 8192,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.0",
}
# What NVIDIA's config class assumes for a key a config.json leaves out; a file is read with these, so that it
# means what it means to the official code (the presets, not these, are the release's values).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "vocab_size": 65536, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "sliding_window": None, "max_position_embeddings": 262144, "orig_max_position_embeddings": None,
    "attention_dropout": 0.0, "num_experts_per_tok": 2, "num_experts": 16, "mamba_d_state": 16,
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": "auto", "mamba_conv_bias": True,
    "mamba_proj_bias": False, "mamba_inner_layernorms": True, "kv_reuse_every_i_layer": -1,
    "kv_reuse_group": None, "kv_weight_reuse": False, "global_attn_idx": None, "num_mamba": 1,
    "rope_type": None, "attn_hidden_size": -1, "kq_head_dim": -1, "kq_norm": None, "rope": False,
    "rope_theta": 10000.0, "num_memory_tokens": 0, "memory_tokens_interspersed_every": 0,
}
# Keys derived from the others: accepted on read whatever they say, recomputed on write (the official code
# overwrites them when it builds the model).
DERIVED_KEYS = ("v_head_dim", "conv_dim", "layer_type", "model_type", "architectures", "auto_map")

ROPE_TYPES = ("default", "ntk", "dynamic_ntk")
KQ_NORMS = ("none", "rms")
MLP_ACTS = ("silu", "relu2")


class ConfigError(HymbaError, ValueError):
    """A HymbaConfig that cannot describe a working model."""


def _release_kv_groups() -> list[list[int]]:
    groups = [[i, i + 1] for i in range(1, 15, 2)]  # [1,2] .. [13,14]
    groups.append([16, 17, 18])
    groups += [[i, i + 1] for i in range(19, 31, 2)]  # [19,20] .. [29,30]
    return groups


@dataclass
class HymbaConfig:
    vocab_size: int = 32001
    hidden_size: int = 1600
    num_hidden_layers: int = 32
    num_attention_heads: int = 25
    num_key_value_heads: int = 5
    intermediate_size: int = 5504  # 0: no MLP in the layers (a pure Mamba-style stack)
    mlp_hidden_act: str = "silu"  # "silu": down(silu(gate(x)) * up(x)); "relu2": down(relu(up(x))^2)
    mamba_expand: int = 2
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_dt_rank: int | str = 100  # "auto": ceil(hidden_size / 16), as in Mamba
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_inner_layernorms: bool = True
    num_memory_tokens: int = 128
    sliding_window: int | None = 1024  # None: every layer attends globally
    global_attn_idx: list[int] = field(default_factory=lambda: [0, 15, 31])
    kv_reuse_group: list[list[int]] = field(default_factory=_release_kv_groups)
    rope: bool = True
    rope_theta: float = 10000.0
    rope_type: str = "ntk"  # null in a file (the official default) reads as "default"
    max_position_embeddings: int = 8192
    orig_max_position_embeddings: int | None = 2048  # only NTK RoPE uses it
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    kq_norm: str = "none"
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    # Our own keys: the paper's baselines from the same code.
    use_attention: bool = True
    use_ssm: bool = True
    # Inert official keys as read from a file, written back unchanged (not part of the architecture).
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.rope_type is None:
            self.rope_type = "default"
        if self.mamba_dt_rank == "auto":
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16) if _is_int(self.hidden_size) else self.mamba_dt_rank
        _check_field_types(self)
        self.global_attn_idx = list(self.global_attn_idx)
        self.kv_reuse_group = [list(g) for g in self.kv_reuse_group]
        self.validate()

    # ---- derived dimensions -------------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """Width of the SSM branch, and of the attention branch's output (heads x value head dim)."""
        return self.mamba_expand * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def v_head_dim(self) -> int:
        """Value heads are wider than query/key heads so that attention outputs exactly d_inner channels."""
        return self.d_inner // self.num_attention_heads

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def is_global(self, layer: int) -> bool:
        """Full causal attention (True) or sliding window + meta tokens (False)."""
        return self.sliding_window is None or layer in self.global_attn_idx

    def kv_producer(self, layer: int) -> int:
        """The layer whose K/V `layer` attends with: itself, or the first layer of its KV group."""
        for group in self.kv_reuse_group:
            if layer in group:
                return group[0]
        return layer

    def makes_kv(self, layer: int) -> bool:
        return self.use_attention and self.kv_producer(layer) == layer

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    # ---- validation ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        L = self.num_hidden_layers
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "mamba_d_conv"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.intermediate_size >= 0, f"intermediate_size must be >= 0, got {self.intermediate_size}")
        need(self.use_attention or self.use_ssm, "use_attention and use_ssm are both false: the layers would mix nothing")
        need(self.mlp_hidden_act in MLP_ACTS, f"mlp_hidden_act {self.mlp_hidden_act!r} is not one of {MLP_ACTS}")
        need(self.mamba_expand >= 1, f"mamba_expand must be >= 1, got {self.mamba_expand}")
        need(self.num_memory_tokens >= 0, f"num_memory_tokens must be >= 0, got {self.num_memory_tokens}")
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        need(self.max_position_embeddings > 0,
             f"max_position_embeddings must be positive, got {self.max_position_embeddings}")
        if self.use_attention:
            H, Hkv = self.num_attention_heads, self.num_key_value_heads
            need(H > 0 and Hkv > 0, f"num_attention_heads ({H}) and num_key_value_heads ({Hkv}) must be positive")
            need(self.hidden_size % H == 0,
                 f"num_attention_heads={H} does not divide hidden_size={self.hidden_size}")
            need(H % Hkv == 0, f"num_key_value_heads={Hkv} does not divide num_attention_heads={H}")
            need(self.d_inner % H == 0,
                 f"num_attention_heads={H} does not divide d_inner={self.d_inner} (value head dim)")
            need(self.rope_type in ROPE_TYPES, f"unknown rope_type {self.rope_type!r}; expected one of {ROPE_TYPES} "
                 "(or null, read as 'default')")
            need(self.kq_norm in KQ_NORMS, f"unsupported kq_norm {self.kq_norm!r}; expected one of {KQ_NORMS} "
                 "(the official code refuses null too)")
            need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
            if self.rope and self.rope_type in ("ntk", "dynamic_ntk"):
                need(self.head_dim > 2 and self.head_dim % 2 == 0,
                     f"rope_type={self.rope_type!r} needs an even head_dim > 2, got {self.head_dim}")
                need(self.orig_max_position_embeddings is not None and self.orig_max_position_embeddings > 0,
                     f"rope_type={self.rope_type!r} needs a positive orig_max_position_embeddings, "
                     f"got {self.orig_max_position_embeddings!r}")
            elif self.rope:
                need(self.head_dim % 2 == 0, f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.use_ssm:
            need(self.mamba_d_state > 0, f"mamba_d_state must be positive, got {self.mamba_d_state}")
            need(isinstance(self.mamba_dt_rank, int) and self.mamba_dt_rank > 0,
                 f"mamba_dt_rank must be a positive int, got {self.mamba_dt_rank!r}")
        if self.sliding_window is not None:
            need(isinstance(self.sliding_window, int) and self.sliding_window > 0,
                 f"sliding_window must be a positive int or null, got {self.sliding_window!r}")
        seen_global = set()
        for i in self.global_attn_idx:
            need(0 <= i < L, f"global_attn_idx names layer {i}, but there are {L} layers (0..{L - 1})")
            need(i not in seen_global, f"global_attn_idx names layer {i} twice")
            seen_global.add(i)
        in_group: dict[int, int] = {}
        for g, group in enumerate(self.kv_reuse_group):
            need(len(group) > 0, f"kv_reuse_group[{g}] is empty")
            need(self.use_attention or len(group) == 1,
                 f"kv_reuse_group[{g}]={group}: K/V sharing needs attention heads (use_attention is false)")
            need(list(group) == sorted(set(group)),
                 f"kv_reuse_group[{g}]={group} must list distinct layers in increasing order (the first makes K/V)")
            for i in group:
                need(0 <= i < L, f"kv_reuse_group[{g}]={group} names layer {i}, but there are {L} layers (0..{L - 1})")
                need(not self.is_global(i) or len(group) == 1,
                     f"kv_reuse_group[{g}]={group} names layer {i}, which is a global-attention layer; "
                     "K/V groups may only hold sliding-window layers")
                need(i not in in_group, f"layer {i} is in kv_reuse_group[{in_group.get(i)}] and kv_reuse_group[{g}]")
                in_group[i] = g

    # ---- official config.json -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HymbaConfig":
        """The config a released-format config.json describes. Keys it leaves out mean what NVIDIA's config class
        makes of them (OFFICIAL_DEFAULTS); every key the official code reads is honoured or refused by name;
        other keys are kept in `extra` and written back."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        d = {**OFFICIAL_DEFAULTS, **d}
        if d.get("model_type", "hymba") != "hymba":
            raise ConfigError(f"model_type is {d['model_type']!r}, expected 'hymba'")
        _resolve_official_keys(d)
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: d[k] for k in names if k in d}
        extra = dict(d.pop("extra", {}) or {})
        for k, v in d.items():
            if k not in names and k not in DERIVED_KEYS:
                extra[k] = v
        try:
            return cls(**known, extra=extra)
        except ConfigError as e:
            every = d["kv_reuse_every_i_layer"]
            if _is_int(every) and every > 0 and "kv_reuse_group" in str(e):
                raise ConfigError(f"kv_reuse_every_i_layer={every} shares K/V in groups {known['kv_reuse_group']}, "
                                  f"which hymba cannot honour: {e}") from None
            raise

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "HymbaConfig":
        """A checkpoint directory's config.json (or the file itself); every problem is a ConfigError naming it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The official config.json content (plus our baseline keys when they differ from the release)."""
        out: dict[str, Any] = {"architectures": ["HymbaForCausalLM"], "model_type": "hymba"}
        out.update(INERT_KEYS)
        out.update(self.extra)
        for f in fields(self):
            if f.name in ("extra", "use_attention", "use_ssm"):
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["v_head_dim"] = self.v_head_dim
        out["conv_dim"] = {str(i): self.d_inner for i in range(self.num_hidden_layers)}
        out["layer_type"] = ["h"] * self.num_hidden_layers
        if not (self.use_attention and self.use_ssm):
            out["use_attention"], out["use_ssm"] = self.use_attention, self.use_ssm
        return out

    def save(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> "HymbaConfig":
        d = asdict(self)
        d.update(changes)
        return HymbaConfig(**d)

    # ---- presets -------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "HymbaConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        d = asdict(PRESETS[name]())
        d.update(overrides)
        return cls(**d)


def _resolve_official_keys(d: dict[str, Any]) -> None:
    """Read the official keys that have no field of their own, in place: each is either what the official code
    makes of it (translated into our fields) or refused with the key and its value."""

    def refuse(key: str, why: str) -> None:
        raise ConfigError(f"{key}={d[key]!r} is not supported: {why}")

    if "mlp_hidden_act" not in d and d.get("hidden_act") in MLP_ACTS:
        d["mlp_hidden_act"] = d["hidden_act"]
    if d["hidden_act"] not in ("silu", "swish"):
        refuse("hidden_act", "the official code applies it inside the SSM branch's conv kernel, which takes "
                             "silu (swish) only")
    if d["num_experts"] != 1:
        refuse("num_experts", "hymba implements the release's single MLP, not a mixture of experts (the official "
                              "config class assumes 16 experts when the key is absent)")
    if not _is_int(d["memory_tokens_interspersed_every"]) or d["memory_tokens_interspersed_every"] > 0:
        refuse("memory_tokens_interspersed_every", "meta tokens are prepended once, as in the release (0)")
    if d["num_key_value_heads"] is None:
        d["num_key_value_heads"] = d["num_attention_heads"]
    for key, derived in (("attn_hidden_size", d["hidden_size"]),
                         ("kq_head_dim", _floor_div(d["hidden_size"], d["num_attention_heads"]))):
        if not _is_int(d[key]) or (d[key] > 0 and d[key] != derived):
            refuse(key, f"the in_proj layout fixes it at {derived} (or -1: derived)")
    if d["kq_norm"] == "perhead-rms":
        refuse("kq_norm", "per-head q/k norm weights are not implemented (kq_norm 'none' and 'rms' are)")
    if d["attention_dropout"] is not None and d["attention_dropout"] != 0:
        refuse("attention_dropout", "hymba applies no dropout (the release trains with 0.0)")
    if d["global_attn_idx"] is None:
        if d["sliding_window"] is not None:
            raise ConfigError(f"global_attn_idx is null while sliding_window={d['sliding_window']!r}: the official "
                              "code fails on this; list the global-attention layers ([] for none)")
        d["global_attn_idx"] = []
    every = d["kv_reuse_every_i_layer"]
    if d["kv_reuse_group"] is None:
        d["kv_reuse_group"] = []
        if _is_int(every) and every > 0 and _is_int(d["num_hidden_layers"]):
            # the official code's other way of sharing: layer i makes K/V when i % every == 0, the next
            # every - 1 layers reuse it
            L = d["num_hidden_layers"]
            d["kv_reuse_group"] = [list(range(i, min(i + every, L))) for i in range(0, L, every)]
    elif not _is_int(every):
        refuse("kv_reuse_every_i_layer", "it must be an integer")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _floor_div(a: Any, b: Any) -> Any:
    return a // b if _is_int(a) and _is_int(b) and b > 0 else None


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _check_field_types(config: "HymbaConfig") -> None:
    """Every field holds a value of its declared type (JSON types: no "128" for 128, no 1.0 for 1, no 1 for true)."""
    hints = typing.get_type_hints(HymbaConfig)
    for f in fields(config):
        name, value = f.name, getattr(config, f.name)
        if name != "extra" and not _type_ok(value, hints[name]):
            raise ConfigError(f"{name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__})")


def _groups_of_two(first: int, last: int) -> list[list[int]]:
    """Pairs [i, i+1] covering layers first..last (a trailing odd layer forms a group of one)."""
    groups = []
    i = first
    while i <= last:
        groups.append([i, i + 1] if i + 1 <= last else [i])
        i += 2
    return groups


def _window_groups(num_layers: int, global_idx: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    bounds = sorted(global_idx) + [num_layers]
    start = 0
    for g in bounds:
        if g > start:
            groups += _groups_of_two(start, g - 1)
        start = g + 1
    return groups


def preset_hymba_1_5b() -> HymbaConfig:
    """The released nvidia/Hymba-1.5B-Base architecture (1,522,797,824 parameters, tied embeddings)."""
    return HymbaConfig()


def preset_hymba_350m() -> HymbaConfig:
    """354,045,824 parameters: 1024 wide, 20 layers, 16 heads of 64 (4 KV heads), FFN 2560, globals at the
    first/middle/last layer and K/V pairs elsewhere, the release's SSM, meta tokens, window and vocabulary."""
    L, g = 20, [0, 10, 19]
    return HymbaConfig(hidden_size=1024, num_hidden_layers=L, num_attention_heads=16, num_key_value_heads=4,
                       intermediate_size=2560, mamba_dt_rank=64, global_attn_idx=g,
                       kv_reuse_group=_window_groups(L, g))


def preset_hymba_125m() -> HymbaConfig:
    """124,246,464 parameters: 768 wide, 12 layers, 12 heads of 64 (4 KV heads), FFN 1536, globals at the
    first/middle/last layer and K/V pairs elsewhere, the release's SSM, meta tokens, window and vocabulary."""
    L, g = 12, [0, 6, 11]
    return HymbaConfig(hidden_size=768, num_hidden_layers=L, num_attention_heads=12, num_key_value_heads=4,
                       intermediate_size=1536, mamba_dt_rank=48, global_attn_idx=g,
                       kv_reuse_group=_window_groups(L, g))


def preset_tiny() -> HymbaConfig:
    """A few-hundred-thousand-parameter model with every feature of the release, for tests."""
    return HymbaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, mamba_d_state=8, mamba_dt_rank=8,
                       num_memory_tokens=8, sliding_window=16, global_attn_idx=[0, 3, 5],
                       kv_reuse_group=[[1, 2], [4]], max_position_embeddings=512,
                       orig_max_position_embeddings=128)


def _baseline(base: str, **changes: Any) -> Any:
    def make() -> HymbaConfig:
        return PRESETS[base]().replace(**changes)

    make.__doc__ = f"{base} with {changes}"
    return make


PRESETS = {
    "hymba-1.5b": preset_hymba_1_5b,
    "hymba-350m": preset_hymba_350m,
    "hymba-125m": preset_hymba_125m,
    "tiny": preset_tiny,
}

# The paper's design-roadmap baselines, derived from the tiny preset (sizes can be overridden).
BASELINES = {
    # Llama-style transformer: attention only, values as wide as queries, every layer global, no meta tokens.
    "attention-only": dict(use_ssm=False, mamba_expand=1, sliding_window=None, global_attn_idx=[],
                           kv_reuse_group=[], num_memory_tokens=0, rope_type="default"),
    # Mamba-style: SSM heads only.
    "ssm-only": dict(use_attention=False, global_attn_idx=[], kv_reuse_group=[], num_memory_tokens=0),
    "no-meta": dict(num_memory_tokens=0),
    "all-global": dict(sliding_window=None, kv_reuse_group=[]),
    "all-window": dict(global_attn_idx=[]),
    "no-kv-sharing": dict(kv_reuse_group=[]),
}
for _name, _changes in BASELINES.items():
    PRESETS[f"tiny-{_name}"] = _baseline("tiny", **_changes)
