"""`hymba eval`: lm-evaluation-harness tasks (PIQA, ARC, WinoGrande, HellaSwag, LAMBADA, BoolQ, OpenBookQA, COPA,
MMLU, ...) on a checkpoint, from local data files, offline."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..evaluation.results import CHANCE, lm_eval_markdown, write_json
from ..utils import atomic_write_text

# --tasks all: every shipped task, MMLU as its group.
ALL_TASKS = ["arc_easy", "arc_challenge", "boolq", "copa", "hellaswag", "lambada_openai", "openbookqa", "piqa",
             "siqa_2way", "winogrande", "mmlu"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (config.json + safetensors + tokenizer)")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory (default: --model)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task names (see --list-tasks), or 'all'")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the evaluation files (piqa.jsonl, arc_easy.jsonl, ...; default: $HYMBA_EVAL_DATA)")
    p.add_argument("--limit", type=float, default=None,
                   help="at most this many items per task (a fraction of each task if < 1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass")
    p.add_argument("--max-length", type=int, default=None,
                   help="text tokens per request (default: the model's max_position_embeddings less its meta tokens)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="seed of few-shot sampling and of lm-eval")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write lm-eval's results as JSON, and the table beside it as FILE.md")
    p.add_argument("--log-samples", action="store_true", help="keep every request and response in the JSON")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="wrap prompts in the tokenizer's chat template (instruct models; few-shot as earlier turns)")
    p.add_argument("--list-tasks", action="store_true", help="print the available task names and exit")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's log messages")


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        from ..evaluation.lm_eval_adapter import HymbaLM, evaluate, task_catalog
    except ImportError as e:
        print(f"hymba eval needs lm-evaluation-harness ({e}); install it with: pip install 'hymba[eval]'",
              file=sys.stderr)
        return 2
    if args.list_tasks:
        catalog = task_catalog()
        print("tasks:", ", ".join(t for t in catalog["tasks"] if not t.startswith("mmlu_")))
        print("groups:", ", ".join(catalog["groups"]))
        print("tags:", ", ".join(catalog["tags"]))
        print("mmlu subjects:", ", ".join(t for t in catalog["tasks"] if t.startswith("mmlu_")))
        return 0
    if not args.model or not args.tasks:
        raise SystemExit("hymba eval: --model and --tasks are required (or --list-tasks)")
    tasks = ALL_TASKS if args.tasks.strip() == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise SystemExit(f"--limit must be positive, got {limit}")
        limit = int(limit) if limit >= 1 else limit
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise SystemExit(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    try:
        lm = HymbaLM(pretrained=args.model, tokenizer_dir=args.tokenizer, batch_size=args.batch_size,
                     device=args.device, dtype=args.dtype, max_length=args.max_length)
        results = evaluate(lm, tasks, args.data_dir, limit=limit, num_fewshot=args.num_fewshot, seed=args.seed,
                           log_samples=args.log_samples, apply_chat_template=args.apply_chat_template)
    except (ValueError, FileNotFoundError) as e:
        print(f"hymba eval: {e}", file=sys.stderr)
        return 2
    results["config"]["model_dir"] = os.path.abspath(args.model)
    table = lm_eval_markdown(results, chance=CHANCE)
    print(table, end="")
    if lm.truncated_requests:
        print(f"note: {lm.truncated_requests} request(s) were longer than max_length={lm.max_length} tokens and lost "
              "the start of their context", file=sys.stderr)
    if args.out:
        write_json(args.out, results)
        md = os.path.splitext(args.out)[0] + ".md"
        header = (f"# lm-eval results: {os.path.basename(os.path.abspath(args.model))}\n\n"
                  f"limit: {limit if limit is not None else 'none'}, few-shot: {args.num_fewshot or 0}, "
                  f"parameters: {results['config'].get('model_num_parameters'):,}\n\n")

        atomic_write_text(md, header + table)
        print(f"wrote {args.out} and {md}", file=sys.stderr)
    return 0
