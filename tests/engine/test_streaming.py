"""Incremental detokenization and stop-string matching, on a byte-level BPE and on Llama-2's byte fallback."""

import io

import pytest

from hymba.engine.streaming import REPLACEMENT, IncrementalDecoder, StopStringMatcher, TextStreamer

MULTIBYTE = "Hello wörld, naïve café 🙂 世界 — done."


def pieces(tokenizer, ids, context=()):
    dec = IncrementalDecoder(tokenizer, context)
    out = [dec.push([t]) for t in ids]
    return out, out and dec.flush()


@pytest.mark.parametrize("which", ["byte_level", "byte_fallback"])
def test_streamed_pieces_concatenate_to_the_full_text_without_broken_characters(which, byte_tokenizer,
                                                                                llama_tokenizer):
    tok = byte_tokenizer if which == "byte_level" else llama_tokenizer
    prompt = tok.encode("Say:")
    ids = tok.encode(" " + MULTIBYTE, add_special_tokens=False)
    # The emoji alone is several tokens in both tokenizers: single-token decoding would print garbage.
    assert any(REPLACEMENT in tok.decode([t]) for t in ids)
    out, rest = pieces(tok, ids, context=prompt)
    assert all(REPLACEMENT not in p for p in out)
    assert "".join(out) + rest == tok.decode(prompt + ids)[len(tok.decode(prompt)):]
    assert sum(1 for p in out if p) > 10  # incremental, not all at the end


def test_first_token_keeps_its_leading_space_with_a_sentencepiece_decoder(llama_tokenizer):
    tok = llama_tokenizer
    prompt = tok.encode("Hello")
    ids = tok.encode("Hello world", add_special_tokens=False)[1:]  # "▁world"
    assert tok.decode(ids) == "world"  # decoded alone the space is lost ...
    out, rest = pieces(tok, ids, context=prompt)
    assert "".join(out) + rest == " world"  # ... but not when streamed after its prompt


def test_incomplete_character_is_flushed_at_the_end(llama_tokenizer):
    tok = llama_tokenizer
    ids = tok.encode("🙂", add_special_tokens=False)
    dec = IncrementalDecoder(tok)
    assert [dec.push([t]) for t in ids[:-1]] == [""] * (len(ids) - 1)
    rest = dec.flush()  # a dangling fragment is shown as U+FFFD (one per byte here), not dropped
    assert rest == tok.decode(ids[:-1]) and set(rest.strip()) == {REPLACEMENT}


def test_stop_string_matcher_across_pieces():
    m = StopStringMatcher(["STOP", "\n\n"])
    released = [m.feed(p) for p in ["abc S", "T", "O", "xyz ST", "OP and more"]]
    assert released == ["abc ", "", "", "STOxyz ", ""]
    assert m.stopped and m.matched == "STOP"
    assert m.feed("later") == "" and m.flush() == ""


def test_stop_string_matcher_holds_back_only_possible_prefixes():
    m = StopStringMatcher(["<end>"])
    assert m.feed("a <e") == "a "
    assert m.feed("x") == "<ex"
    assert m.feed("<en") == ""
    assert m.flush() == "<en" and not m.stopped


def test_stop_string_matcher_takes_the_earliest_match():
    m = StopStringMatcher(["world", "lo w"])
    assert m.feed("hello world") == "hel"
    assert m.matched == "lo w"
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher([""])


def test_text_streamer_writes_one_row_and_cuts_at_stop_strings(byte_tokenizer):
    tok = byte_tokenizer
    ids = tok.encode("hi! how can I help?", add_special_tokens=False)
    out = io.StringIO()
    s = TextStreamer(tok, row=1, stop_strings=["can"], file=out)
    for t in ids:
        s.put([None, t, 7])
    s.end()
    assert out.getvalue() == "hi! how " == s.text


def test_text_streamer_skips_special_tokens_and_calls_on_text(byte_tokenizer):
    tok = byte_tokenizer
    got = []
    s = TextStreamer(tok, on_text=got.append)
    for t in tok.encode("café", add_special_tokens=False) + [tok.eos_token_id]:
        s.put([t])
    s.put([None])
    s.end()
    assert "".join(got) == "café" == s.text
