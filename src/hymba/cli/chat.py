"""`hymba chat`: a multi-turn conversation with an instruct checkpoint, rendered with its chat template.

Each line on standard input is a user turn; the reply streams to standard output. `/reset` starts over (the
system message stays), `/exit` or end of input (Ctrl-D, or the end of a piped file) leaves; Ctrl-C stops the
reply being written. The whole conversation is prefilled again for every reply (a hybrid cache cannot be
rewound to the re-rendered template, so reusing it would need the template to re-tokenize identically).
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..config import ConfigError
from ..engine.generate import generate
from ..engine.streaming import TextStreamer
from ..tokenizer import TokenizerError
from .generate import add_model_arguments, add_sampling_arguments, generation_kwargs, load_model

HELP = "commands: /reset (forget the conversation), /exit (leave; so does Ctrl-D)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system message for the whole conversation")
    add_sampling_arguments(p, max_new_tokens=512)


def run(args: argparse.Namespace) -> int:
    try:
        kwargs = generation_kwargs(args, "chat")
        model, tokenizer = load_model(args)
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer in {args.tokenizer or args.model} has no chat_template "
                             "(tokenizer_config.json): chat needs an instruct checkpoint; use `hymba generate` "
                             "for a base model")
    except (ValueError, FileNotFoundError, ConfigError, TokenizerError) as e:
        print(f"hymba chat: error: {e}", file=sys.stderr)
        return 2

    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    session = ChatSession(model, tokenizer, system=args.system, **kwargs)
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
            out = session.reply(text, file=sys.stdout)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the conversation
            session.messages.pop()  # the unanswered user turn
            print("\n(interrupted; that turn is forgotten)", file=sys.stderr, flush=True)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        if out.finish_reasons[0] == "length":
            print(f"(reply cut at {args.max_new_tokens} tokens: --max-new-tokens)", file=sys.stderr, flush=True)
    return 0


class ChatSession:
    """The conversation so far; `reply(text)` adds a user turn, streams the assistant's answer, records it."""

    def __init__(self, model, tokenizer, system: str | None = None, **generate_kwargs):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.generate_kwargs = generate_kwargs
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, file=None):
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=True)
        streamer = TextStreamer(self.tokenizer, prompt_ids=ids, stop_strings=self.generate_kwargs.get("stop_strings"),
                                file=file)
        out = generate(self.model, torch.tensor([ids]), tokenizer=self.tokenizer, streamer=streamer,
                       return_dict=True, **self.generate_kwargs)
        self.messages.append({"role": "assistant", "content": streamer.text.strip()})
        return out
