"""Training a byte-level BPE tokenizer from scratch with the `tokenizers` library.

The result is an ordinary checkpoint tokenizer (tokenizer.json + tokenizer_config.json, read by
`hymba.tokenizer.load_tokenizer`). Special tokens come first, at the ids the release uses for them
(pad 0, bos 1, eos 2), then three chat-role markers, the 256 byte symbols and the learned merges. Every
string round-trips exactly: byte-level BPE has no unknown token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..tokenizer import Tokenizer

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Our chat format: BOS, then one block per message, each opened by its role marker. An assistant turn ends with
# EOS (what generation stops on), so supervised fine-tuning teaches the model where a reply ends.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role ' + message['role'] + ' (expected system, user or assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                        show_progress: bool = False):
    """Learn a byte-level BPE vocabulary of `vocab_size` ids (special tokens and bytes included) from `texts`.

    Returns a `hymba.tokenizer.Tokenizer` that adds BOS when encoding with special tokens."""
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least {minimum} "
                         f"ids ({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, add_bos_token=True,
                     add_eos_token=False, chat_template=CHAT_TEMPLATE,
                     config={"model_max_length": 1_000_000, "padding_side": "left"}, source="trained BPE")


def parse_tokenizer_spec(spec: str) -> int | str:
    """`train:VOCAB_SIZE` -> the vocabulary size to train; anything else is a tokenizer directory."""
    if spec.startswith("train:"):
        value = spec.split(":", 1)[1]
        try:
            size = int(value.replace("_", ""))
        except ValueError:
            raise ValueError(f"--tokenizer {spec!r}: expected train:VOCAB_SIZE with an integer size, e.g. "
                             "train:8192") from None
        return size
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"--tokenizer {spec!r} is neither train:VOCAB_SIZE nor an existing directory")
    return spec
