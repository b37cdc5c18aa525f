"""AutoTokenizer on the release's tokenizer files: SentencePiece (on tokenizer.model) is the oracle, the chat
template is the release's, and saving keeps it all."""

import os
import re
import shutil

import pytest
from hf_helpers import RELEASE, TOKENIZER_FILES
from transformers import AutoTokenizer

from hymba import load_tokenizer
from hymba.hf import HymbaTokenizer

spm = pytest.importorskip("sentencepiece", reason="the oracle: pip install sentencepiece (in the dev extra)")

SPECIAL = ("<unk>", "<s>", "</s>", "[PAD]")
SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[PAD]": 32000}
TEXTS = [
    "Hello world, this is Hymba.",
    "  leading spaces", "trailing spaces   ", "   ", " ", "", "multiple   spaces  between    words",
    "line one\nline two\n\n\nafter blank lines\n", "\ttabs\tinside\t\tand a tab at the end\t",
    "</s> <s> [PAD] <extra_id_1>User", "a<s>b</s>c[PAD]d<unk>e", "  <s>  spaced specials  </s>  ",
    "Grüße aus Köln, naïve café, ¿qué tal?", "Привет, мир! Как дела?", "你好，世界。混合 text 与中文",
    "こんにちは、世界", "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 🙂🚀 and 👩‍👩‍👧 family, flags 🇫🇷",
    "code: def f(x):\n    return x ** 2  # square", "numbers 3.14159 1,000,000 2024-12-06",
    "\u200bzero width\u00a0nbsp", "<extra_id_0>System\nBe brief.\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n",
]


def sentencepiece_ids(sp, text: str) -> list[int]:
    """The oracle: BOS, then each stretch between special tokens encoded by SentencePiece (which gives every
    stretch its own dummy-prefix space, as transformers 4.46 and the release's tokenizer.json do), with the special
    tokens' own ids in between."""
    ids = [1]
    for part in re.split("(" + "|".join(map(re.escape, SPECIAL)) + ")", text):
        if part in SPECIAL_IDS:
            ids.append(SPECIAL_IDS[part])
        elif part:
            ids += sp.encode(part)
    return ids


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=os.path.join(RELEASE, "tokenizer.model"))


def test_autotokenizer_encodes_as_sentencepiece(sp):
    tok = AutoTokenizer.from_pretrained(RELEASE)
    assert type(tok) is HymbaTokenizer
    ours = load_tokenizer(RELEASE)
    for text in TEXTS:
        want = sentencepiece_ids(sp, text)
        assert tok(text)["input_ids"] == want, text
        assert tok.encode(text) == want and ours.encode(text) == want, text
    # the two cases transformers 5's own LlamaTokenizer gets wrong
    assert tok("  leading spaces")["input_ids"][:3] == [1, 259, 8236]
    assert tok("</s> <s> [PAD] <extra_id_1>User")["input_ids"][:8] == [1, 2, 259, 1, 259, 32000, 29871, 529]


def test_special_tokens_padding_and_decoding(sp):
    tok = AutoTokenizer.from_pretrained(RELEASE)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 32000, 0)
    assert tok.padding_side == "left" and len(tok) == 32001
    batch = tok(["Hi", "Hello world, this is Hymba."], padding=True)
    assert batch["input_ids"][0][:8] == [32000] * 8 and batch["attention_mask"][0][:8] == [0] * 8
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(
            [i for i in ids if i not in SPECIAL_IDS.values()]), text


def test_chat_template_is_the_releases():
    tok = AutoTokenizer.from_pretrained(RELEASE)
    ours = load_tokenizer(RELEASE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And now?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ours.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("<extra_id_1>User\nAnd now?\n<extra_id_1>Assistant\n")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def test_save_and_reload_and_sentencepiece_only_directories(tmp_path, sp):
    """Saved and loaded back, the tokenizer encodes the same. A checkpoint with only tokenizer.model (no
    tokenizer.json) is converted by transformers' SentencePiece reader, which agrees too. (AutoTokenizer knows
    a Hymba tokenizer by the directory's config.json; for a folder with tokenizer files only, use
    HymbaTokenizer.from_pretrained.)"""
    tok = AutoTokenizer.from_pretrained(RELEASE)
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert type(again) is HymbaTokenizer and again.chat_template == tok.chat_template
    only_spm = tmp_path / "spm"
    only_spm.mkdir()
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json":
            shutil.copy(os.path.join(RELEASE, name), only_spm)
    bare = HymbaTokenizer.from_pretrained(only_spm)
    shutil.copy(os.path.join(RELEASE, "config.json"), only_spm)
    converted = AutoTokenizer.from_pretrained(only_spm)
    assert type(converted) is HymbaTokenizer
    for text in TEXTS:
        want = sentencepiece_ids(sp, text)
        assert again.encode(text) == want and converted.encode(text) == want and bare.encode(text) == want, text
