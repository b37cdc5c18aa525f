"""`hymba recall`: recall tasks on a checkpoint: multi-query associative recall (MQAR), needle in a haystack at
several context lengths and depths, and the key-value retrieval sets of the evaluation folder. Results as JSON
and a markdown table, and for the needle a plot of accuracy vs context length."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..engine.loading import resolve_device_dtype
from ..evaluation import recall
from ..evaluation.recall import evaluate_recall
from ..evaluation.results import markdown_table, plot_accuracy_vs_length, write_json
from ..modeling import HymbaForCausalLM
from ..utils import atomic_write_text
from .generate import add_model_arguments, load_model
from .progress import progress


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}") from None
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths are fractions in [0, 1], got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--task", required=True, choices=["mqar", "needle", "kv-pairs"])
    p.add_argument("--token-level", action="store_true",
                   help="synthetic tokens over the model's vocabulary, no tokenizer (models trained on token-level "
                        "MQAR); default: text through the tokenizer")
    p.add_argument("--samples", type=int, default=None,
                   help="mqar: sequences (default 100); needle: samples per length and depth (default 5)")
    p.add_argument("--num-pairs", type=int, default=16, help="mqar: key-value pairs per sequence")
    p.add_argument("--num-queries", type=int, default=None, help="mqar: keys asked (default: all pairs)")
    p.add_argument("--seq-len", type=int, default=None, help="token-level mqar: sequence length (filler in between)")
    p.add_argument("--context-lengths", type=_ints, default=[256, 512, 1024, 2048],
                   help="needle: comma-separated context lengths in tokens")
    p.add_argument("--depths", type=_fractions, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="needle: comma-separated relative depths of the needle")
    p.add_argument("--haystack", choices=["filler", "pairs"], default="filler",
                   help="token-level needle: filler tokens, or other key-value pairs around the needle")
    p.add_argument("--haystack-file", default=None, metavar="FILE",
                   help="text needle: draw filler sentences from this text file (default: built-in prose)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="kv-pairs: the evaluation folder "
                   "(default: $HYMBA_EVAL_DATA)")
    p.add_argument("--positions", default="beginning,middle,end", help="kv-pairs: which of the three sets")
    p.add_argument("--limit", type=int, default=None, help="kv-pairs: at most this many items per set")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write recall_<task>.json and .md (and recall_needle.png) in DIR")


def _load(args):
    if not args.token_level:
        return load_model(args)

    if not os.path.exists(os.path.join(args.model, "config.json")):
        raise ValueError(f"--model {args.model}: no config.json there; is it a checkpoint directory?")
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    return HymbaForCausalLM.from_pretrained(args.model, dtype=dtype, device=device).eval(), None


def _samples(args, model, tokenizer):
    """(samples, the info keys to group by) for the chosen task."""
    vocab = model.config.vocab_size
    if args.task == "mqar":
        n = args.samples or 100
        if args.token_level:
            return recall.mqar_samples(n, vocab_size=vocab, num_pairs=args.num_pairs, num_queries=args.num_queries,
                                       seq_len=args.seq_len, seed=args.seed), ["num_pairs"]
        return recall.mqar_text_samples(tokenizer, n, num_pairs=args.num_pairs, num_queries=args.num_queries,
                                        seed=args.seed), ["num_pairs"]
    if args.task == "needle":
        n = args.samples or 5
        if args.token_level:
            return recall.needle_token_samples(vocab_size=vocab, context_lengths=args.context_lengths,
                                               depths=args.depths, samples_per_cell=n, haystack=args.haystack,
                                               seed=args.seed), ["context_length", "depth"]
        sentences = None
        if args.haystack_file:
            with open(args.haystack_file, encoding="utf-8") as f:
                sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", f.read()) if len(s.strip()) > 1]
        return recall.needle_text_samples(tokenizer, context_lengths=args.context_lengths, depths=args.depths,
                                          samples_per_cell=n, seed=args.seed,
                                          haystack_sentences=sentences), ["context_length", "depth"]
    if args.token_level:
        raise ValueError("kv-pairs is a text task: drop --token-level")
    positions = [p.strip() for p in args.positions.split(",") if p.strip()]
    return recall.kv_pairs_samples(tokenizer, args.data_dir, positions, limit=args.limit), ["position"]


def run(args: argparse.Namespace) -> int:
    try:
        model, tokenizer = _load(args)
        samples, by = _samples(args, model, tokenizer)
        longest = max(len(s.tokens) for s in samples)
        limit = model.config.max_position_embeddings - model.config.num_memory_tokens
        if longest > limit:
            print(f"note: samples reach {longest} tokens, beyond the {limit} the model was configured for "
                  "(max_position_embeddings less meta tokens)", file=sys.stderr)
        with progress("samples") as update:
            summary = evaluate_recall(model, samples, by=by, batch_size=args.batch_size, progress=update)
    except (ValueError, FileNotFoundError) as e:
        print(f"hymba recall: {e}", file=sys.stderr)
        return 2
    title = f"{args.task}{' (token level)' if args.token_level else ''}: {os.path.basename(os.path.abspath(args.model))}"
    table = markdown_table(summary["table"], by + ["accuracy", "answers", "samples"])
    print(f"{title}\naccuracy {summary['accuracy']:.4f} over {summary['answers']} answers "
          f"({summary['samples']} samples, {summary['min_tokens']}-{summary['max_tokens']} tokens)\n")
    print(table, end="")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"recall_{args.task.replace('-', '_')}")
        options = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        write_json(stem + ".json", {"task": args.task, "options": options, **summary})

        atomic_write_text(stem + ".md", f"# {title}\n\naccuracy: {summary['accuracy']:.4f} "
                                        f"({summary['answers']} answers)\n\n{table}")
        written = [stem + ".json", stem + ".md"]
        if args.task == "needle":
            by_length: dict[int, list] = {}
            for row in summary["table"]:
                by_length.setdefault(row["context_length"], []).append(row)
            mean = {n: sum(r["accuracy"] * r["answers"] for r in rows) / sum(r["answers"] for r in rows)
                    for n, rows in by_length.items()}
            series = {"all depths": mean}
            for depth in args.depths:
                series[f"depth {depth:g}"] = {r["context_length"]: r["accuracy"] for r in summary["table"]
                                              if r["depth"] == depth}
            plot_accuracy_vs_length(series, stem + ".png", title=title)
            written.append(stem + ".png")
        print("wrote " + ", ".join(written), file=sys.stderr)
    return 0
