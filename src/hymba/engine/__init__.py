"""Inference: the hybrid cache, generation (sampling, padding, chunked prefill), tokenizer and chat."""

from .cache import CacheFullError, HybridCache
from .generate import GenerateOutput, generate
from .sampling import SamplingParams
from .streaming import IncrementalDecoder, StopStringMatcher, TextStreamer
from .tokenizer import Tokenizer, TokenizerError, load_tokenizer

__all__ = ["CacheFullError", "GenerateOutput", "HybridCache", "IncrementalDecoder", "SamplingParams",
           "StopStringMatcher", "TextStreamer", "Tokenizer", "TokenizerError", "generate", "load_tokenizer"]
