"""The base of every error hymba raises about its input (configs, checkpoints, tokenizers, data, arguments):
`except hymba.HymbaError` catches them all, and each names the file, key or tensor at fault."""


class HymbaError(Exception):
    """Bad input to hymba, reported with what is wrong and where."""
