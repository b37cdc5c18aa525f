"""Turning a growing list of token ids into text, piece by piece, correctly.

Decoding tokens one at a time is wrong twice over: byte-fallback tokens carry fragments of a UTF-8 character
(one emoji is four tokens), and SentencePiece-style decoders drop the leading space of the first token they
see. `IncrementalDecoder` therefore decodes a short window of already-emitted tokens together with the new
ones, emits only the new suffix, and holds text back while it ends in an incomplete character.
`StopStringMatcher` finds stop strings in such a stream, across piece boundaries, and holds back any tail
that might be the start of one. `TextStreamer` combines both for one row of a `generate` call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TextIO

from ..errors import InputError

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence


class Decodes(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDecoder:
    """Text of a token stream as it grows; `push(ids)` returns the newly completed text.

    `context`: tokens that precede the stream (e.g. the prompt), decoded with it but never emitted, so that
    the first new token keeps its leading space.
    """

    def __init__(self, tokenizer: Decodes, context: Sequence[int] = (), skip_special_tokens: bool = True,
                 context_tokens: int = 4):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        tokens = [int(t) for t in context][-context_tokens:] if context_tokens > 0 else []
        if tokens and self._decode(tokens).endswith(REPLACEMENT):
            tokens = []  # a prompt cut inside a character would shift every offset: start clean instead
        self.tokens = tokens
        self.prefix_offset = 0  # tokens[prefix_offset:read_offset] were decoded before (their text is known)
        self.read_offset = len(tokens)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _advance(self, final: bool) -> str:
        prefix = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return full[len(prefix):]

    def push(self, ids: Iterable[int]) -> str:
        self.tokens.extend(int(t) for t in ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        return self._advance(final=True)


class StopStringMatcher:
    """Watches text pieces for any of `stop_strings`.

    `feed(text)` returns the text that is safe to release: everything before the first stop string (after
    which `stopped` is true and the rest is discarded), minus a tail that could still become a stop string.
    """

    def __init__(self, stop_strings: Sequence[str]):
        stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        for s in stop_strings:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop strings must be non-empty strings, got {s!r}")
        self.stop_strings = stop_strings
        self.pending = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.pending + text
        hits = [(buf.find(s), s) for s in self.stop_strings if s in buf]
        if hits:
            cut, self.matched = min(hits)
            self.stopped, self.pending = True, ""
            return buf[:cut]
        hold = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out


class Streamer(Protocol):
    """What `generate(..., streamer=...)` calls. `put` gets, for every batch row, the token appended at this
    step, or None for a row that had already finished; `end` is called once, after the last step."""

    def put(self, new_tokens: list[int | None]) -> None: ...

    def end(self) -> None: ...


class TextStreamer:
    """Writes one row's generated text as it is produced (to `file`, default stdout, or to `on_text`).

    `prompt_ids`: the row's prompt, so the first token keeps its leading space. `stop_strings`: text from the
    first stop string on is not written (pass the same ones to `generate` so generation stops there too).
    The text written so far is in `.text`.
    """

    def __init__(self, tokenizer: Decodes, prompt_ids: Sequence[int] = (), row: int = 0,
                 stop_strings: Sequence[str] | None = None, skip_special_tokens: bool = True,
                 file: TextIO | None = None, on_text: Callable[[str], None] | None = None):
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids, skip_special_tokens)
        self.matcher = StopStringMatcher(stop_strings) if stop_strings else None
        self.row = row
        self.file = file
        self.on_text = on_text
        self.text = ""

    def _write(self, text: str) -> None:
        if not text:
            return
        self.text += text
        if self.on_text is not None:
            self.on_text(text)
        else:
            out = self.file if self.file is not None else sys.stdout
            out.write(text)
            out.flush()

    def put(self, new_tokens: list[int | None]) -> None:
        token = new_tokens[self.row]
        if token is None:
            return
        text = self.decoder.push([token])
        self._write(self.matcher.feed(text) if self.matcher else text)

    def end(self) -> None:
        text = self.decoder.flush()
        if self.matcher:
            text = self.matcher.feed(text) + self.matcher.flush()
        self._write(text)
