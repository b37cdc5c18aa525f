"""`hymba serve`: an OpenAI-compatible HTTP server (completions, chat completions, models, health, metrics)
over the continuous-batching engine. Needs the `serve` extra: pip install 'hymba[serve]'."""

from __future__ import annotations

import argparse

from ..errors import HymbaError
from .generate import add_model_arguments
from .options import chunk_size, non_empty, non_negative_float, non_negative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--served-model-name", type=non_empty, default=None, metavar="NAME",
                   help="the model's name in the API (default: the --model directory's name)")
    p.add_argument("--max-num-seqs", type=positive_int, default=64, help="requests decoding at once")
    p.add_argument("--max-model-len", type=positive_int, default=None, metavar="N",
                   help="prompt + generated tokens of one request (default: the model's context)")
    p.add_argument("--prefill-chunk-size", type=chunk_size, default=None, metavar="N",
                   help="prompt tokens per prefill step, taken down to a power of two >= 16 (default: 2048 on "
                        "CUDA, else 512)")
    p.add_argument("--max-waiting", type=positive_int, default=256,
                   help="requests queued for a slot before new ones get 429")
    p.add_argument("--drain-timeout", type=non_negative_float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long the requests in flight may take to finish")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import serve
    except ImportError as e:
        raise HymbaError(f"hymba serve needs the 'serve' extra ({e.name} is missing): "
                         "pip install 'hymba[serve]'") from None
    try:
        return serve(args.model, args.host, args.port, tokenizer_dir=args.tokenizer, device=args.device,
                     dtype=args.dtype, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                     prefill_chunk_size=args.prefill_chunk_size, max_waiting=args.max_waiting,
                     served_model_name=args.served_model_name, drain_timeout=args.drain_timeout,
                     log_level=args.log_level)
    except (ValueError, OSError) as e:
        raise HymbaError(str(e)) from None
