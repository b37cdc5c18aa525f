"""The Hymba model: layers (norms, RoPE, MLP), the hybrid mixer, and the language model."""

from .mixer import HymbaMixer
from .model import CausalLMOutput, HymbaDecoderLayer, HymbaForCausalLM, HymbaModel, compile_layers

__all__ = ["CausalLMOutput", "HymbaDecoderLayer", "HymbaForCausalLM", "HymbaMixer", "HymbaModel", "compile_layers"]
