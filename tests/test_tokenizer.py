"""Tokenizer loading: the released Hymba-1.5B files, tokenizers written from scratch, the chat template."""

import json
import os

import pytest
import torch

from hymba.tokenizer import Tokenizer, TokenizerError, load_tokenizer


def test_hymba_ids_special_tokens_and_vocabulary(llama_tokenizer):
    tok = llama_tokenizer
    # The format document, section 8.
    assert tok.encode("Hello world, this is Hymba.") == [1, 15043, 3186, 29892, 445, 338, 379, 962, 2291, 29889]
    assert tok.encode("Hello world, this is Hymba.", add_special_tokens=False)[0] == 15043
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 32000, 0)
    assert tok.vocab_size == 32001 == len(tok)
    assert tok.decode([1, 15043, 3186, 29892, 2]) == "Hello world,"
    assert tok.decode([1, 15043, 3186, 29892, 2], skip_special_tokens=False) == "<s> Hello world,</s>"


def test_byte_fallback_round_trip(llama_tokenizer):
    text = "naïve café 🙂 世界"
    ids = llama_tokenizer.encode(text)
    assert [llama_tokenizer.id_to_token(i) for i in ids].count("<0xF0>") == 1  # the emoji falls back to bytes
    assert llama_tokenizer.decode(ids) == text


def test_chat_template_matches_the_format_document(llama_tokenizer):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is Hymba?"},
                {"role": "assistant", "content": "A hybrid-head language model."},
                {"role": "user", "content": "  Who made it?  "}]
    # Section 8: "<extra_id_0>System" + "\n" + system, "\n\n", per turn "<extra_id_1>User\n{text}\n" /
    # "<extra_id_1>Assistant\n{text}\n", then "<extra_id_1>Assistant\n" to prompt a reply (contents stripped).
    expected = ("<extra_id_0>System\nYou are a helpful assistant.\n\n"
                "<extra_id_1>User\nWhat is Hymba?\n"
                "<extra_id_1>Assistant\nA hybrid-head language model.\n"
                "<extra_id_1>User\nWho made it?\n"
                "<extra_id_1>Assistant\n")
    assert llama_tokenizer.apply_chat_template(messages, add_generation_prompt=True) == expected
    assert llama_tokenizer.apply_chat_template(messages) == expected[:-len("<extra_id_1>Assistant\n")]
    ids = llama_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == llama_tokenizer.encode(expected, add_special_tokens=False)


def test_chat_template_runs_sandboxed(llama_tokenizer):
    from jinja2.exceptions import SecurityError

    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError):
        llama_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], chat_template=evil)


def test_batch_call_pads_left_by_default(llama_tokenizer):
    ids, mask = llama_tokenizer(["Hi", "Hello world, this is Hymba."])
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == (2, 10)
    assert ids[1].tolist() == [1, 15043, 3186, 29892, 445, 338, 379, 962, 2291, 29889]
    hi = llama_tokenizer.encode("Hi")
    assert ids[0].tolist() == [32000] * (10 - len(hi)) + hi
    assert mask[0].tolist() == [0] * (10 - len(hi)) + [1] * len(hi)
    right, rmask = llama_tokenizer(["Hi", "Hello world, this is Hymba."], padding_side="right")
    assert right[0, :len(hi)].tolist() == hi and rmask[0].tolist() == [1] * len(hi) + [0] * (10 - len(hi))


def test_save_round_trip_and_transformers_reads_it(llama_tokenizer, tmp_path):
    llama_tokenizer.save(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "Hello world, this is Hymba. 🙂"
    assert again.encode(text) == llama_tokenizer.encode(text)
    assert again.chat_template == llama_tokenizer.chat_template
    assert (again.bos_token, again.eos_token, again.pad_token) == ("<s>", "</s>", "[PAD]")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.encode(text) == llama_tokenizer.encode(text)
    assert hf.pad_token_id == 32000


def write_scratch_tokenizer(path, config: dict, with_post_processor: bool = False) -> None:
    """A word-level tokenizer as a training script would write it: tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3, "hello": 4, "world": 5, "again": 6}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<unk>", "<bos>", "<eos>", "<pad>"])
    if with_post_processor:
        backend.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    os.makedirs(path, exist_ok=True)
    backend.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)


def test_scratch_tokenizer_with_string_special_tokens(tmp_path):
    write_scratch_tokenizer(tmp_path, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                       "add_bos_token": True, "chat_template": "{{ messages[0]['content'] }}!"})
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (1, 2, 3, 7)
    assert tok.encode("hello world") == [1, 4, 5]
    assert tok.encode("hello world", add_special_tokens=False) == [4, 5]
    assert tok.decode([1, 4, 5, 2]) == "hello world"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"
    ids, mask = tok(["hello", "hello world again"])
    assert ids.tolist() == [[3, 3, 1, 4], [1, 4, 5, 6]] and mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_add_bos_token_false_overrides_the_post_processor_and_absent_keeps_it(tmp_path):
    write_scratch_tokenizer(tmp_path / "off", {"bos_token": "<bos>", "add_bos_token": False}, with_post_processor=True)
    assert load_tokenizer(tmp_path / "off").encode("hello") == [4]
    write_scratch_tokenizer(tmp_path / "keep", {"bos_token": "<bos>"}, with_post_processor=True)
    assert load_tokenizer(tmp_path / "keep").encode("hello") == [1, 4]
    write_scratch_tokenizer(tmp_path / "none", {})
    tok = load_tokenizer(tmp_path / "none")
    assert tok.encode("hello") == [4] and tok.bos_token_id is None and tok.chat_template is None
    with pytest.raises(TokenizerError, match="no chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_added_token_dicts_are_accepted(tmp_path):
    write_scratch_tokenizer(tmp_path, {"eos_token": {"__type": "AddedToken", "content": "<eos>", "lstrip": False}})
    assert load_tokenizer(tmp_path).eos_token_id == 2


@pytest.mark.parametrize("config, message", [
    ({"bos_token": "<s>"}, "bos_token '<s>' is not in the vocabulary"),
    ({"add_bos_token": True}, "add_bos_token is true but no bos_token"),
    ({"add_bos_token": "yes"}, "add_bos_token must be true or false"),
    ({"pad_token": 3}, "pad_token must be a string"),
])
def test_bad_tokenizer_config_is_named(tmp_path, config, message):
    write_scratch_tokenizer(tmp_path, config)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizers file"):
        load_tokenizer(tmp_path)


def test_tokenizer_built_in_code_saves_like_a_checkpoint(byte_tokenizer, tmp_path):
    assert isinstance(byte_tokenizer, Tokenizer)
    byte_tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["add_bos_token"] is True and config["padding_side"] == "left"
    again = load_tokenizer(tmp_path)
    assert again.encode("héllo 🙂") == byte_tokenizer.encode("héllo 🙂") and again.encode("x")[0] == 1


def test_named_chat_templates_use_the_default(tmp_path):
    write_scratch_tokenizer(tmp_path, {"chat_template": [{"name": "tool_use", "template": "T"},
                                                         {"name": "default", "template": "D"}]})
    assert load_tokenizer(tmp_path).apply_chat_template([]) == "D"
    write_scratch_tokenizer(tmp_path, {"chat_template": [{"name": "tool_use", "template": "T"}]})
    with pytest.raises(TokenizerError, match="without a 'default'"):
        load_tokenizer(tmp_path)
