"""Inference: the continuous-batching engine (`Engine`, `LLM`, `AsyncEngine`), batched generation on a
cache (`generate`: sampling, padding, chunked prefill, streaming, stop strings), CUDA-graph decoding, and
loading a checkpoint with its tokenizer."""

from .async_engine import AsyncEngine, Delta, EngineBusyError, EngineStoppedError
from .cache import new_cache, prefill
from .core import Engine, Request
from .generate import GenerateOutput, generate
from .llm import LLM
from .loading import load_model_and_tokenizer
from .params import CompletionOutput, RequestOutput, SamplingParams
from .shared import release_engine
from .streaming import IncrementalDecoder, StopStringMatcher, TextStreamer

__all__ = ["LLM", "AsyncEngine", "CompletionOutput", "Delta", "Engine", "EngineBusyError", "EngineStoppedError",
           "GenerateOutput", "IncrementalDecoder", "Request", "RequestOutput", "SamplingParams", "StopStringMatcher",
           "TextStreamer", "generate", "load_model_and_tokenizer", "new_cache", "prefill", "release_engine"]
