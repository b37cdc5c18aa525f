"""The base of every error hymba raises about its input (configs, checkpoints, tokenizers, data, arguments):
`except hymba.HymbaError` catches them all, and each names the file, key or tensor at fault."""


class HymbaError(Exception):
    """Bad input to hymba, reported with what is wrong and where."""


class InputError(HymbaError, ValueError):
    """Inputs a model or generation call cannot take (token ids, attention mask, lengths, settings)."""


class GenerationError(HymbaError, RuntimeError):
    """Generation cannot go on (the model's outputs became NaN or infinite)."""
