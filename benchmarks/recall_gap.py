"""The recall gap (paper, design roadmap): attention recalls exact tokens, a fixed-size SSM state struggles, and
Hymba's parallel heads keep attention's recall.

Three tiny models of (nearly) equal size, built from the same code ("tiny-attention-only", "tiny-ssm-only",
"tiny"; the baselines' MLP widths are adjusted so that their non-embedding parameter counts match Hymba's),
are trained briefly, on the same token-level MQAR batches, and evaluated on
  - MQAR as trained (num_pairs key-value pairs, every key asked once),
  - MQAR with twice the pairs (the state has to hold more),
  - needle in a haystack: one key-value pair at a depth among other pairs (or filler tokens), asked at the end,
    at several context lengths.

    .venv/bin/python benchmarks/recall_gap.py                      # CPU defaults: a few minutes per model
    .venv/bin/python benchmarks/recall_gap.py --steps 20 --eval-samples 20 --out /tmp/rg   # a smoke run

Writes benchmarks/results/recall_gap.{json,md,png} (accuracy vs context length of the needle).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from hymba import HymbaConfig, HymbaForCausalLM  # noqa: E402
from hymba.evaluation.recall import (evaluate_recall, mqar_samples, needle_token_samples,  # noqa: E402
                                     training_batch)
from hymba.evaluation.results import markdown_table, plot_accuracy_vs_length, write_json  # noqa: E402

MODELS = {"attention-only": "tiny-attention-only", "ssm-only": "tiny-ssm-only", "hymba": "tiny"}


def equalised_config(preset: str, vocab_size: int, target: int | None, max_positions: int) -> HymbaConfig:
    """The preset with `vocab_size`, and the MLP width that brings its non-embedding parameters closest to
    `target` (None: keep the preset's)."""
    base = HymbaConfig.from_preset(preset, vocab_size=vocab_size, max_position_embeddings=max_positions)

    def count(cfg: HymbaConfig) -> int:
        with torch.device("meta"):
            return HymbaForCausalLM(cfg, init=False).num_parameters(exclude_embeddings=True)

    if target is None:
        return base
    best = min(range(16, 8 * base.intermediate_size + 1, 4),
               key=lambda w: abs(count(base.replace(intermediate_size=w)) - target))
    return base.replace(intermediate_size=best)


def train(model: HymbaForCausalLM, args, device) -> tuple[list[dict], float]:
    """AdamW, linear warmup then cosine decay, gradient clipping; batch i is MQAR seed i for every model."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)
    log, start = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = training_batch(mqar_samples(args.batch_size, vocab_size=args.vocab, num_pairs=args.num_pairs,
                                            seq_len=args.seq_len, seed=step))
        loss = model(batch["input_ids"].to(device), labels=batch["labels"].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - start, 1)})
            print(f"    step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:7.1f}s", flush=True)
    model.eval()
    return log, time.perf_counter() - start


def evaluate(model: HymbaForCausalLM, args) -> dict:
    seed = 10**6  # disjoint from the training seeds 0..steps-1
    out = {}
    sets = {
        "mqar": mqar_samples(args.eval_samples, vocab_size=args.vocab, num_pairs=args.num_pairs,
                             seq_len=args.seq_len, seed=seed),
        "mqar_2x_pairs": mqar_samples(args.eval_samples, vocab_size=args.vocab, num_pairs=2 * args.num_pairs,
                                      seq_len=2 * args.seq_len, seed=seed + 1),
    }
    for name, samples in sets.items():
        out[name] = evaluate_recall(model, samples, batch_size=64)["accuracy"]
    for haystack in ("pairs", "filler"):
        needle = needle_token_samples(vocab_size=args.vocab, context_lengths=args.needle_lengths,
                                      depths=args.depths, samples_per_cell=args.needle_samples, haystack=haystack,
                                      seed=seed + 2)
        summary = evaluate_recall(model, needle, by=["context_length"], batch_size=64)
        out[f"needle_{haystack}"] = summary["accuracy"]
        out[f"needle_{haystack}_by_length"] = {r["context_length"]: r["accuracy"] for r in summary["table"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    p.add_argument("--vocab", type=int, default=64, help="token ids (4 reserved, 16 filler, keys, values)")
    p.add_argument("--num-pairs", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--needle-lengths", default="8,16,24,32,40",
                   help="needle context lengths (a haystack of pairs needs vocab >= length + 18)")
    p.add_argument("--needle-samples", type=int, default=20, help="per context length and depth")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--no-equalise", action="store_true", help="keep the presets' MLP widths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default="auto", help="kernel bundle (model.set_kernels): auto, reference, ...")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default=os.path.join(HERE, "results", "recall_gap"), help="path stem of the results")
    args = p.parse_args()
    args.needle_lengths = [int(x) for x in args.needle_lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(MODELS)}")

    max_positions = max(args.needle_lengths + [2 * args.seq_len]) + 64
    target = None  # Hymba's non-embedding parameters: the baselines' MLPs are sized to match
    if not args.no_equalise:
        with torch.device("meta"):
            target = HymbaForCausalLM(equalised_config("tiny", args.vocab, None, max_positions),
                                      init=False).num_parameters(exclude_embeddings=True)

    rows, runs = [], {}
    for name in names:
        config = equalised_config(MODELS[name], args.vocab, None if name == "hymba" else target, max_positions)
        torch.manual_seed(args.seed)
        model = HymbaForCausalLM(config).to(device).set_kernels(args.kernels)
        params = model.num_parameters(exclude_embeddings=True)
        print(f"{name}: {MODELS[name]}, MLP width {config.intermediate_size}, {params:,} parameters without "
              f"embeddings", flush=True)
        log, seconds = train(model, args, device)
        with torch.no_grad():
            scores = evaluate(model, args)
        runs[name] = {"preset": MODELS[name], "intermediate_size": config.intermediate_size,
                      "parameters": model.num_parameters(), "parameters_without_embeddings": params,
                      "train_seconds": round(seconds, 1), "final_loss": log[-1]["loss"], "log": log, **scores}
        rows.append({"model": name, "params (no emb.)": params, "train s": round(seconds), "final loss": log[-1]["loss"],
                     "MQAR": scores["mqar"], "MQAR 2x pairs": scores["mqar_2x_pairs"],
                     "needle (pairs)": scores["needle_pairs"], "needle (filler)": scores["needle_filler"]})
        print(f"  {rows[-1]}", flush=True)

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["torch"] = torch.__version__
    settings["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    write_json(args.out + ".json", {"settings": settings, "models": runs})
    lengths_table = [{"model": n, **{f"L={k}": v for k, v in runs[n]["needle_pairs_by_length"].items()}}
                     for n in names]
    md = (f"# Recall gap: attention-only vs SSM-only vs Hymba (tiny, trained on MQAR)\n\n"
          f"Each model: {args.steps} steps of {args.batch_size} MQAR sequences ({args.num_pairs} pairs, "
          f"{args.seq_len} tokens, vocabulary {args.vocab}), AdamW lr {args.lr}, on {settings['device_name']}. "
          f"Accuracy: answers whose tokens are the greedy prediction. Chance is about "
          f"1/{(args.vocab - 20) // 2} for a value.\n\n"
          + markdown_table(rows, formats={"MQAR": "{:.3f}", "MQAR 2x pairs": "{:.3f}", "needle (pairs)": "{:.3f}",
                                          "needle (filler)": "{:.3f}"})
          + "\nNeedle among key-value pairs, accuracy by context length (tokens):\n\n"
          + markdown_table(lengths_table, digits=3))
    from hymba.utils import atomic_write_text

    atomic_write_text(args.out + ".md", md)
    plot_accuracy_vs_length({n: runs[n]["needle_pairs_by_length"] for n in names}, args.out + ".png",
                            title="Needle among key-value pairs (tiny models trained on MQAR)")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
