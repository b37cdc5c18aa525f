"""`hymba generate`: continue a prompt with a checkpoint, streaming the text to the terminal.

Generation runs through the continuous-batching engine (`hymba.engine.Engine`), as `hymba serve` and
`hymba.LLM` do. Shared with `hymba chat`: the model/tokenizer/sampling arguments, the loader and `stream`.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..engine import Engine, load_model_and_tokenizer
from ..engine.core import Request
from ..engine.params import SamplingParams
from ..tokenizer import TokenizerError
from .options import (
    chunk_size,
    non_empty,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (config.json + safetensors)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="directory with tokenizer.json (+ tokenizer_config.json); default: the model directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations (auto: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling mass in (0, 1] (default 1: off)")
    p.add_argument("--top-k", type=non_negative_int, default=None,
                   help="sample among the k most likely tokens (default 0: off)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="> 1 discourages repeats (1: off)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", type=non_empty, default=None, metavar="TEXT",
                   help=r"stop when the text contains TEXT (repeatable; \n and \t are understood); "
                        "it is not printed")
    p.add_argument("--prefill-chunk-size", type=chunk_size, default=None,
                   help="prompt tokens per prefill step, rounded down to a power of two >= 16 (default 2048 on CUDA, "
                        "512 on a CPU)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text to continue")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-': standard input)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    add_sampling_arguments(p, max_new_tokens=128)
    p.add_argument("--quiet", action="store_true", help="no statistics line on stderr")


def load_model(args: argparse.Namespace):
    """The checkpoint of --model and the tokenizer of --tokenizer (default: the same directory)."""
    return load_model_and_tokenizer(args.model, args.tokenizer, device=args.device, dtype=args.dtype)


def sampling_params(args: argparse.Namespace, command: str) -> SamplingParams:
    """The engine's SamplingParams from the sampling arguments; sampling options given for greedy decoding are
    ignored, with a warning that says so."""
    sample = args.temperature > 0
    if not sample:
        ignored = [flag for flag, value in (("--top-p", args.top_p), ("--top-k", args.top_k), ("--seed", args.seed))
                   if value is not None]
        if ignored:
            warn(command, f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored with --temperature 0 "
                          "(greedy decoding); give a temperature > 0 to sample")
    return SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature if sample else 0.0,
                          top_k=(args.top_k or 0) if sample else 0, top_p=(args.top_p or 1.0) if sample else 1.0,
                          repetition_penalty=args.repetition_penalty,
                          seed=args.seed % 2**63 if sample and args.seed is not None else None,  # any int seeds
                          stop=[unescape(s) for s in args.stop or []] or None)


def make_engine(model, tokenizer, args: argparse.Namespace) -> Engine:
    """A one-slot engine for the terminal commands: one prompt or conversation turn at a time."""
    return Engine(model, tokenizer, max_num_seqs=1, prefill_chunk_size=args.prefill_chunk_size)


def stream(engine: Engine, ids: list[int], params: SamplingParams, file=None) -> Request:
    """Run one request through `engine`, writing its text to `file` (default: standard output) as it grows;
    returns the finished Request. On Ctrl-C the request is aborted, so the engine is left empty."""
    written = 0

    def on_update(req: Request) -> None:
        nonlocal written
        if len(req.text) > written:
            out = file if file is not None else sys.stdout
            out.write(req.text[written:])
            out.flush()
            written = len(req.text)

    req = engine.add_request(ids, params, on_update=on_update)
    engine.run([req])
    return req


def finish_reason(req: Request) -> str:
    """Why a request ended, in the words of the statistics line: "eos", "stop_string", "length" or "abort"."""
    if req.finish_reason == "stop":
        return "stop_string" if isinstance(req.stop_reason, str) else "eos"
    return str(req.finish_reason)


def warn(command: str, message: str) -> None:
    print(f"hymba {command}: warning: {message}", file=sys.stderr)


def unescape(text: str) -> str:
    r"""`\n`, `\t` and `\\` typed on a command line, as the characters they stand for."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def report(req: Request, stream=None) -> None:
    """One line of statistics for a finished request (to standard error by default)."""
    n = len(req.output_ids)
    first = req.first_token_time if req.first_token_time is not None else req.arrival
    decode = (req.finish_time or first) - first
    rate = (n - 1) / decode if n > 1 and decode > 0 else float("nan")
    print(f"[{n} tokens ({finish_reason(req)}); prefill {first - req.arrival:.2f} s, "
          f"decode {rate:.1f} tokens/s]", file=stream or sys.stderr)


def _read_prompt(args: argparse.Namespace) -> str:
    """The prompt as text; bytes that are not UTF-8 (from the command line, a file or standard input) are an
    error that says where they came from."""
    if args.prompt is not None:
        source, text = "--prompt", args.prompt
        try:  # undecodable command-line bytes arrive as lone surrogates
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"--prompt is not valid UTF-8 text (an undecodable byte at character {e.start})") from None
        return text
    if args.prompt_file == "-":
        if not hasattr(sys.stdin, "buffer"):  # a text stream (already decoded)
            return sys.stdin.read()
        source, data = "standard input", sys.stdin.buffer.read()
    else:
        source = f"--prompt-file {args.prompt_file}"
        try:
            with open(args.prompt_file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"{source}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def run(args: argparse.Namespace) -> int:
    try:
        params = sampling_params(args, "generate")
        if args.system is not None and not args.chat:
            warn("generate", "--system is ignored without --chat")
        prompt = _read_prompt(args)
        model, tokenizer = load_model(args)
        if args.chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": prompt})
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:
            ids = tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty and the tokenizer adds no BOS token: nothing to continue from")
        engine = make_engine(model, tokenizer, args)
    except (ValueError, FileNotFoundError, ConfigError, TokenizerError) as e:
        print(f"hymba generate: error: {e}", file=sys.stderr)
        return 2

    req = stream(engine, ids, params)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        report(req)
    return 0
