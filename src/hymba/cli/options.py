"""argparse value types shared by the commands: a value out of range is a one-line usage error (exit status 2),
as argparse reports any other bad argument."""

from __future__ import annotations

import argparse

from ..engine.core import round_chunk


def _number(kind, text: str, ok, requirement: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, ">= 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, ">= 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, ">= 0")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: v > 0, "> 0")


def probability(text: str) -> float:
    return _number(float, text, lambda v: 0 < v <= 1, "in (0, 1]")


def non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def chunk_size(text: str) -> int:
    """A prefill chunk size (>= 1), as the engine takes it: the largest power of two not above it, at least 16
    (the engine buckets prompt chunks by powers of two)."""
    return round_chunk(positive_int(text))
