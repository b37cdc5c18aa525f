"""Offline batches through the engine, in the style of vLLM's `LLM`:

    llm = LLM("path/to/hymba-1.5b")
    outs = llm.generate(["Hello", "The capital of France is"], SamplingParams(temperature=0, max_tokens=32))
    outs[0].outputs[0].text, outs[0].outputs[0].token_ids
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ..errors import InputError
from .core import Engine
from .loading import load_model_and_tokenizer
from .params import RequestOutput, SamplingParams


class LLM:
    """A model (a checkpoint directory, or a loaded model with its tokenizer) behind a continuous-batching
    engine. On CUDA the engine captures its decode graphs and runs every prefill shape once here
    (`startup_seconds`), so that no request compiles anything. Engine options: see `Engine`."""

    def __init__(self, model, tokenizer=None, *, device: str = "auto", dtype: str = "auto", max_num_seqs: int = 64,
                 max_model_len: int | None = None, prefill_chunk_size: int | None = None,
                 cuda_graphs: bool | None = None, compile_decode: bool = False, warm_up: bool | None = None):
        t0 = time.perf_counter()
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_model_and_tokenizer(os.fspath(model), tokenizer, device=device, dtype=dtype)
        self.model, self.tokenizer = model, tokenizer
        self.engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                             prefill_chunk_size=prefill_chunk_size, cuda_graphs=cuda_graphs,
                             compile_decode=compile_decode)
        if warm_up if warm_up is not None else model.device.type == "cuda":
            self.engine.warm_up()
        self.startup_seconds = time.perf_counter() - t0

    def _encode(self, prompt) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError("text prompts need a tokenizer; pass token ids instead")
            return self.tokenizer.encode(prompt), prompt
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"]), prompt.get("prompt")
        if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            return list(prompt), None
        raise InputError(f"a prompt is a string, a list of token ids or {{'prompt_token_ids': [...]}}, got "
                         f"{type(prompt).__name__}")

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Continue each prompt (text, token ids, or {'prompt_token_ids': ids}); one output per prompt, in
        order. `sampling_params`: one for all, or one per prompt."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, Sequence) and prompts
                                                and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            per_prompt = [sampling_params or SamplingParams()] * len(prompts)
        else:
            per_prompt = list(sampling_params)
            if len(per_prompt) != len(prompts):
                raise InputError(f"{len(per_prompt)} sampling_params for {len(prompts)} prompts")
        encoded = [self._encode(p) for p in prompts]  # every prompt checked before any runs
        requests = [self.engine.add_request(ids, params, prompt=text)
                    for (ids, text), params in zip(encoded, per_prompt)]
        self.engine.run(requests)
        return [r.output() for r in requests]

    def chat(self, conversations, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
             ) -> list[RequestOutput]:
        """Like `generate`, for conversations ([{"role", "content"}, ...], or a list of them) rendered with the
        tokenizer's chat template."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if self.tokenizer is None:
            raise InputError("chat needs a tokenizer (with a chat template)")
        prompts = [{"prompt_token_ids": self.tokenizer.apply_chat_template(c, add_generation_prompt=True,
                                                                          tokenize=True)} for c in conversations]
        return self.generate(prompts, sampling_params)
