"""Hymba in the Hugging Face ecosystem (transformers >= 5), without remote code.

`import hymba` registers model_type "hymba" with transformers' AutoConfig, AutoModelForCausalLM and
AutoTokenizer (lazily: when transformers' Auto classes are first imported; `registration.py` says how), so a
checkpoint in the released layout loads with no `trust_remote_code`:

    import hymba
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    model = AutoModelForCausalLM.from_pretrained(DIR)      # HymbaHFForCausalLM: generate, peft, TRL
    tokenizer = AutoTokenizer.from_pretrained(DIR)         # HymbaTokenizer: encodes as SentencePiece does
    pipe = pipeline("text-generation", model=DIR)

The classes are importable from here (importing them imports transformers): HymbaHFConfig,
HymbaHFForCausalLM, HymbaCache, HymbaTokenizer. docs/transformers.md has the full usage.
"""

from __future__ import annotations

from typing import Any

from .registration import TransformersVersionError, check_transformers, install, register

_EXPORTS = {"HymbaHFConfig": "configuration", "HymbaHFForCausalLM": "modeling", "HymbaCache": "cache",
            "HymbaTokenizer": "tokenization", "CacheUnsupportedError": "cache"}

__all__ = ["TransformersVersionError", "check_transformers", "install", "register", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """The transformers classes, imported on first use (PEP 562) so that `import hymba.hf` stays cheap."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    check_transformers()
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
