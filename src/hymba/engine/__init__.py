"""Inference: caches for a batch of requests, batched generation (sampling, padding, chunked prefill,
streaming, stop strings), CUDA-graph decoding, and loading a checkpoint with its tokenizer."""

from .cache import new_cache, prefill
from .generate import GenerateOutput, generate
from .loading import load_model_and_tokenizer
from .sampling import SamplingParams
from .streaming import IncrementalDecoder, StopStringMatcher, TextStreamer

__all__ = ["GenerateOutput", "IncrementalDecoder", "SamplingParams", "StopStringMatcher", "TextStreamer", "generate",
           "load_model_and_tokenizer", "new_cache", "prefill"]
