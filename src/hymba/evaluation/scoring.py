"""Teacher-forced scoring of token sequences: the one primitive behind lm-eval's loglikelihoods, sliding-window
perplexity and the recall tasks.

A request is a token sequence and the index of its first target: every token from there on is scored as
log p(token | all tokens before it), and flagged as greedy when it is the argmax of that distribution.
Requests are batched longest first and right padded (the model's attention mask keeps pads out of attention
and the SSM); the LM head runs only at the positions that predict a target, so a long context costs hidden
states, not [length x vocabulary] logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TargetScores:
    """Per target token of one request, in order: log-probability and whether it was the model's argmax."""

    logprobs: torch.Tensor  # [n_targets] float64
    greedy: torch.Tensor  # [n_targets] bool

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def all_greedy(self) -> bool:
        return bool(self.greedy.all())


def check_request(tokens: Sequence[int], first_target: int, vocab_size: int, max_length: int | None = None) -> None:
    if not 1 <= first_target <= len(tokens):
        raise ValueError(f"first_target must be in [1, {len(tokens)}] for a sequence of {len(tokens)} tokens "
                         f"(a target needs at least one token before it), got {first_target}")
    if max_length is not None and len(tokens) - 1 > max_length:
        raise ValueError(f"a sequence of {len(tokens)} tokens needs {len(tokens) - 1} input positions, more than "
                         f"max_length={max_length}")
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the model's vocabulary [0, {vocab_size})")


@torch.no_grad()
def score_targets(model, requests: Sequence[tuple[Sequence[int], int]], batch_size: int = 8,
                  max_length: int | None = None, head_chunk: int = 2048,
                  progress: Callable[[int], None] | None = None) -> list[TargetScores]:
    """Score `requests` [(tokens, first_target), ...] with `model` (a HymbaForCausalLM); results in input order.

    The model reads tokens[:-1] and predicts tokens[first_target:]. `max_length` bounds the input positions per
    request (checked, never truncated here). `progress(done, total)` is called after each batch with the
    requests scored so far and their number."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vocab = model.config.vocab_size
    for tokens, first in requests:
        check_request(tokens, first, vocab, max_length)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    done = 0  # longest first: OOM shows at once
    results: list[TargetScores | None] = [None] * len(requests)
    device = model.device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        inputs = [list(requests[i][0][:-1]) for i in batch]
        width = max(len(x) for x in inputs)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, :len(x)] = 1
        hidden = model.model(ids.to(device), attention_mask=mask.to(device))  # [B, width, d], text positions only
        # The positions that predict a target: first_target - 1 .. len - 2 of each row.
        rows, cols, targets, owners = [], [], [], []
        for row, i in enumerate(batch):
            tokens, first = requests[i]
            n = len(tokens) - first
            rows += [row] * n
            cols += range(first - 1, len(tokens) - 1)
            targets += list(tokens[first:])
            owners.append(n)
        rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        targets_t = torch.tensor(targets, device=device)
        logprobs, greedy = [], []
        for s in range(0, len(rows), head_chunk):
            h = hidden[rows_t[s:s + head_chunk], cols_t[s:s + head_chunk]]
            logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
            t = targets_t[s:s + head_chunk]
            logprobs.append(logp.gather(-1, t[:, None])[:, 0].double().cpu())
            greedy.append((logp.argmax(-1) == t).cpu())
        logprobs_t = torch.cat(logprobs) if logprobs else torch.zeros(0, dtype=torch.float64)
        greedy_t = torch.cat(greedy) if greedy else torch.zeros(0, dtype=torch.bool)
        offset = 0
        for i, n in zip(batch, owners):
            results[i] = TargetScores(logprobs_t[offset:offset + n], greedy_t[offset:offset + n])
            offset += n
        done += len(batch)
        if progress is not None:
            progress(done, len(requests))
    return results  # type: ignore[return-value]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context (with BOS, as the tokenizer adds it) and of its continuation, the way
    lm-evaluation-harness splits them: trailing spaces of the context move to the continuation, the whole
    string is encoded once, and the continuation is what follows the context's own encoding. An empty context
    becomes the BOS token (else EOS)."""
    if not context:
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("an empty context needs a BOS or EOS token to condition on; the tokenizer has neither")
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]
