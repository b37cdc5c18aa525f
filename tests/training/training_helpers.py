"""Helpers of the training tests: a synthetic corpus and a seconds-long training config."""

import os
import random

from hymba.training.config import TrainConfig

WORDS = {
    "who": ["the cat", "a dog", "the old king", "my sister", "the robot", "a small bird"],
    "did": ["saw", "found", "painted", "carried", "forgot", "wanted"],
    "what": ["a red ball", "the blue door", "seven apples", "the river", "a green hat", "the last train"],
    "where": ["in the garden", "at the station", "under the bridge", "by the sea", "in the kitchen"],
}


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(WORDS['who'])} {rng.choice(WORDS['did'])} {rng.choice(WORDS['what'])} {rng.choice(WORDS['where'])}."


def make_documents(n: int, seed: int = 0, sentences: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(sentences // 2, sentences))) + "\n" for _ in range(n)]


def write_corpus(directory, n_docs: int = 40, seed: int = 0) -> str:
    """A Gutenberg-style text file: documents joined by `<|endoftext|>` lines."""
    path = os.path.join(directory, "corpus.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("<|endoftext|>\n".join(make_documents(n_docs, seed)))
    return path


def tiny_config(data: str, out: str, **sections) -> TrainConfig:
    """A seconds-long pretraining run of the tiny preset on `data`."""
    base = {
        "model": {"preset": "tiny"},
        "data": {"path": data, "seq_len": 32},
        "optim": {"lr": 3e-3, "min_lr": 1e-4},
        "schedule": {"warmup_steps": 2},
        "train": {"out_dir": out, "batch_size": 4, "max_steps": 8, "log_interval": 1, "eval_interval": 0,
                  "eval_batches": 2, "save_interval": 0, "threads": 1, "progress": False, "tensorboard": False,
                  "plot": False},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return TrainConfig.from_dict(base)
