"""pipeline("text-generation", model=DIR) on a Hymba checkpoint: plain prompts and chat messages through the
release's chat template, equal to generate on the same ids."""

import torch
from transformers import pipeline

from hymba.hf import HymbaHFForCausalLM, HymbaTokenizer


def test_text_generation_pipeline_from_a_directory(hf_dir, hf_model, hf_tokenizer):
    pipe = pipeline("text-generation", model=hf_dir, device="cpu", dtype=torch.float32)
    assert isinstance(pipe.model, HymbaHFForCausalLM) and isinstance(pipe.tokenizer, HymbaTokenizer)
    out = pipe("Hello world", max_new_tokens=8, min_new_tokens=8, do_sample=False)
    ids = hf_tokenizer("Hello world", return_tensors="pt")
    want = hf_model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    # the pipeline appends the new tokens decoded on their own to the prompt text (a SentencePiece decode drops
    # the leading space of its first token, as for every Llama-2-style tokenizer in transformers 5)
    new = hf_tokenizer.decode(want[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out[0]["generated_text"] == "Hello world" + new


def test_chat_messages_go_through_the_chat_template(hf_dir, hf_model, hf_tokenizer):
    pipe = pipeline("text-generation", model=hf_dir, device="cpu", dtype=torch.float32)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    out = pipe(messages, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    turns = out[0]["generated_text"]
    assert turns[:2] == messages and turns[2]["role"] == "assistant"
    prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)
    want = hf_model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    reply = hf_tokenizer.decode(want[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert turns[2]["content"] == reply
