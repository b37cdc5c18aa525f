"""`hymba chat`: a multi-turn conversation with an instruct checkpoint, rendered with its chat template.

Each line on standard input is a user turn; the reply streams to standard output. `/reset` starts over (the
system message stays), `/exit` or end of input (Ctrl-D, or the end of a piped file) leaves; Ctrl-C stops the
reply being written. The whole conversation is prefilled again for every reply (a hybrid cache cannot be
rewound to the re-rendered template, so reusing it would need the template to re-tokenize identically);
the engine that runs the replies is made once, its CUDA graphs captured once for the whole conversation.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..engine.core import Engine, Request
from ..engine.params import SamplingParams
from ..errors import InputError
from ..tokenizer import TokenizerError
from .generate import add_model_arguments, add_sampling_arguments, load_model, make_engine, sampling_params, stream

HELP = "commands: /reset (forget the conversation), /exit (leave; so does Ctrl-D)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system message for the whole conversation")
    add_sampling_arguments(p, max_new_tokens=512)


def run(args: argparse.Namespace) -> int:
    try:
        params = sampling_params(args, "chat")
        model, tokenizer = load_model(args)
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer in {args.tokenizer or args.model} has no chat_template "
                             "(tokenizer_config.json): chat needs an instruct checkpoint; use `hymba generate` "
                             "for a base model")
        engine = make_engine(model, tokenizer, args)
    except (ValueError, FileNotFoundError, ConfigError, TokenizerError) as e:
        print(f"hymba chat: error: {e}", file=sys.stderr)
        return 2

    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    session = ChatSession(engine, tokenizer, params, system=args.system)
    while True:
        if interactive:
            print("\n> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr, flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=sys.stderr, flush=True)
            continue
        try:
            req = session.reply(text, file=sys.stdout)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the conversation
            session.messages.pop()  # the unanswered user turn
            print("\n(interrupted; that turn is forgotten)", file=sys.stderr, flush=True)
            continue
        except InputError as e:  # the conversation outgrew the context: say so, keep the session
            session.messages.pop()
            print(f"hymba chat: {e}; /reset to start over", file=sys.stderr, flush=True)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        if req.finish_reason == "length":
            print(f"(reply cut at {args.max_new_tokens} tokens: --max-new-tokens)", file=sys.stderr, flush=True)
    return 0


class ChatSession:
    """The conversation so far; `reply(text)` adds a user turn, streams the assistant's answer, records it."""

    def __init__(self, engine: Engine, tokenizer, params: SamplingParams, system: str | None = None):
        self.engine, self.tokenizer, self.params = engine, tokenizer, params
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, file=None) -> Request:
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=True)
        req = stream(self.engine, ids, self.params, file=file)
        self.messages.append({"role": "assistant", "content": req.text.strip()})
        return req
