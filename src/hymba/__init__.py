"""hymba: NVIDIA's Hymba hybrid-head language models in plain PyTorch (CPU or GPU, no compiled extensions)."""

from . import hf
from .config import ConfigError, HymbaConfig
from .engine import LLM, GenerateOutput, SamplingParams, TextStreamer, generate, load_model_and_tokenizer
from .errors import GenerationError, HymbaError, InputError
from .modeling import CausalLMOutput, HymbaForCausalLM, HymbaModel
from .tokenizer import Tokenizer, TokenizerError, load_tokenizer

# Register model_type "hymba" with transformers' Auto classes once they are imported (nothing is imported now).
hf.install()

__version__ = "0.1.0"

__all__ = ["CausalLMOutput", "ConfigError", "GenerateOutput", "GenerationError", "HymbaConfig", "HymbaError",
           "HymbaForCausalLM", "HymbaModel", "InputError", "LLM", "SamplingParams", "TextStreamer", "Tokenizer", "TokenizerError", "__version__",
           "generate", "load_model_and_tokenizer", "load_tokenizer"]
