"""hymba: NVIDIA's Hymba hybrid-head language models in plain PyTorch (CPU or GPU, no compiled extensions)."""

from .config import ConfigError, HymbaConfig
from .modeling import CausalLMOutput, HymbaForCausalLM, HymbaModel

__version__ = "0.1.0"

__all__ = ["CausalLMOutput", "ConfigError", "HymbaConfig", "HymbaForCausalLM", "HymbaModel", "__version__"]
