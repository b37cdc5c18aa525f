"""Fixtures for the generation-engine tests: a tiny checkpoint directory holding a model with every cache
feature and the byte-level tokenizer (tests/conftest.py), and that checkpoint loaded."""

import os

import pytest
import torch
from helpers import random_weights

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, byte_tokenizer) -> str:
    """A tiny Hymba checkpoint in the released layout with the byte-level tokenizer saved beside it."""
    path = str(tmp_path_factory.mktemp("tiny-checkpoint"))
    torch.manual_seed(0)
    config = HymbaConfig.from_preset("tiny", vocab_size=byte_tokenizer.vocab_size, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=3)
    random_weights(HymbaForCausalLM(config), seed=1).save_pretrained(path)
    byte_tokenizer.save(path)
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    return path


@pytest.fixture(scope="session")
def checkpoint(checkpoint_dir):
    """(model, tokenizer) loaded back from `checkpoint_dir`."""
    return HymbaForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32), load_tokenizer(checkpoint_dir)
