"""The recall gap (paper): attention recalls exact tokens, a fixed-size SSM state struggles, Hymba's parallel
heads keep attention's recall. Three tiny models of (nearly) equal size ("tiny-attention-only",
"tiny-ssm-only", "tiny"; the baselines' MLP widths adjusted to match Hymba's non-embedding parameters) are
trained on the same token-level MQAR batches, then evaluated on MQAR as trained, MQAR with twice the pairs,
and a needle (one key-value pair among other pairs, or among filler tokens) at several context lengths.
Opt-in: 2,000 steps take tens of minutes on a CPU (`--param recall_gap.device=cuda` for a GPU).
"""

from __future__ import annotations

import math
import time

import torch

from ..common import Ctx, metric

NAME = "recall_gap"
SUITE = "cpu"
DESCRIPTION = "MQAR and needle recall of tiny attention-only, SSM-only and Hymba models trained alike (opt-in: long)"
DEFAULT = False
EST_S = 1800
MODELS = {"attention-only": "tiny-attention-only", "ssm-only": "tiny-ssm-only", "hymba": "tiny"}
VOCAB, PAIRS, SEQ_LEN, BATCH, LR = 64, 6, 24, 32, 3e-3
NEEDLE_LENGTHS, DEPTHS = [8, 16, 24, 32, 40], [0, 0.25, 0.5, 0.75, 1]


def equalised_config(preset: str, target: int | None, max_positions: int):
    """The preset with the MLP width that brings its non-embedding parameters closest to `target`."""
    from hymba import HymbaConfig, HymbaForCausalLM

    base = HymbaConfig.from_preset(preset, vocab_size=VOCAB, max_position_embeddings=max_positions)

    def count(cfg) -> int:
        with torch.device("meta"):
            return HymbaForCausalLM(cfg, init=False).num_parameters(exclude_embeddings=True)
    if target is None:
        return base
    best = min(range(16, 8 * base.intermediate_size + 1, 4),
               key=lambda w: abs(count(base.replace(intermediate_size=w)) - target))
    return base.replace(intermediate_size=best)


def train(ctx: Ctx, model, steps: int, device) -> float:
    """AdamW, linear warm-up then cosine decay, gradient clipping; batch i is MQAR seed i for every model."""
    from hymba.evaluation.recall import mqar_samples, training_batch

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.98))
    warmup, start, loss = max(1, steps // 20), time.perf_counter(), None
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch = training_batch(mqar_samples(BATCH, vocab_size=VOCAB, num_pairs=PAIRS, seq_len=SEQ_LEN, seed=step))
        loss = model(batch["input_ids"].to(device), labels=batch["labels"].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == steps - 1:
            ctx.log(f"    step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:7.1f} s")
    model.eval()
    return loss.item()


@torch.no_grad()
def evaluate(model, samples: int, needle_samples: int) -> dict:
    from hymba.evaluation.recall import evaluate_recall, mqar_samples, needle_token_samples

    seed = 10**6  # disjoint from the training seeds
    out = dict(mqar=evaluate_recall(model, mqar_samples(samples, vocab_size=VOCAB, num_pairs=PAIRS, seq_len=SEQ_LEN,
                                                        seed=seed), batch_size=64)["accuracy"],
               mqar_2x_pairs=evaluate_recall(model, mqar_samples(samples, vocab_size=VOCAB, num_pairs=2 * PAIRS,
                                                                 seq_len=2 * SEQ_LEN, seed=seed + 1),
                                             batch_size=64)["accuracy"])
    for haystack in ("pairs", "filler"):
        needle = needle_token_samples(vocab_size=VOCAB, context_lengths=NEEDLE_LENGTHS, depths=DEPTHS,
                                      samples_per_cell=needle_samples, haystack=haystack, seed=seed + 2)
        summary = evaluate_recall(model, needle, by=["context_length"], batch_size=64)
        out[f"needle_{haystack}"] = summary["accuracy"]
        out[f"needle_{haystack}_by_length"] = {r["context_length"]: r["accuracy"] for r in summary["table"]}
    return out


def run(ctx: Ctx) -> dict:
    from hymba import HymbaForCausalLM

    steps = ctx.param("steps", 5 if ctx.smoke else 2000)
    samples = ctx.param("eval_samples", 8 if ctx.smoke else 200)
    needle_samples = ctx.param("needle_samples", 1 if ctx.smoke else 20)
    device = torch.device(ctx.param("device", "cpu"))
    max_positions = max(NEEDLE_LENGTHS + [2 * SEQ_LEN]) + 64
    with torch.device("meta"):
        target = HymbaForCausalLM(equalised_config("tiny", None, max_positions),
                                  init=False).num_parameters(exclude_embeddings=True)
    runs, metrics = {}, []
    for name, preset in MODELS.items():
        config = equalised_config(preset, None if name == "hymba" else target, max_positions)
        torch.manual_seed(0)
        model = HymbaForCausalLM(config).to(device).set_kernels("reference")
        ctx.log(f"{name}: {preset}, MLP width {config.intermediate_size}")
        t = time.perf_counter()
        loss = train(ctx, model, steps, device)
        runs[name] = dict(preset=preset, intermediate_size=config.intermediate_size, final_loss=loss,
                          train_s=time.perf_counter() - t,
                          parameters_without_embeddings=model.num_parameters(exclude_embeddings=True),
                          **evaluate(model, samples, needle_samples))
        r = runs[name]
        metrics += [metric(f"{name}: MQAR accuracy", r["mqar"], "", headline=True,
                           compare=f"needle among pairs {r['needle_pairs']:.3f}, "
                                   f"among filler {r['needle_filler']:.3f}; "
                                   f"chance ~{1 / ((VOCAB - 20) // 2):.3f}"),
                    metric(f"{name}: MQAR, 2x pairs", r["mqar_2x_pairs"], "")]
    return dict(params=dict(steps=steps, batch=BATCH, vocab=VOCAB, pairs=PAIRS, seq_len=SEQ_LEN, lr=LR,
                            eval_samples=samples, needle_samples=needle_samples, device=str(device),
                            kernels="reference"),
                metrics=metrics, details=runs)
