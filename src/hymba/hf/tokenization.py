"""HymbaTokenizer: the release's tokenizer for transformers' AutoTokenizer, encoding exactly as SentencePiece does.

The release's tokenizer_config.json names "LlamaTokenizer". transformers 5 rebuilds that class's pipeline from
the vocabulary (a Metaspace pre-tokenizer instead of the file's Prepend + Replace normalizer), which encodes
runs of spaces differently from SentencePiece ("  leading spaces" -> [1, 29871, 8236, ...] instead of
[1, 259, 8236, ...]) and gives a space before special tokens a different token. This class reads tokenizer.json
as written (a directory with only tokenizer.model is converted by transformers' SentencePiece reader, which
agrees too), and adds BOS/EOS as tokenizer_config.json's add_bos_token / add_eos_token say, as
`hymba.load_tokenizer` and transformers 4.46 (the version NVIDIA shipped with) do.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TokenizersBackend

from ..tokenizer import CONFIG_FILE, read_tokenizer_config, special_token_flags


class HymbaTokenizer(TokenizersBackend):
    """A Hymba checkpoint's tokenizer.json + tokenizer_config.json (special tokens, chat template, left
    padding), with no rewriting of the tokenization pipeline."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load as transformers does, then apply tokenizer_config.json's add_bos_token / add_eos_token (which
        transformers 5 leaves to tokenizer.json's post-processor) unless passed explicitly."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            flags = special_token_flags(read_tokenizer_config(path), os.path.join(path, CONFIG_FILE))
            for key, value in flags.items():
                if value is not None:
                    kwargs.setdefault(key, value)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
