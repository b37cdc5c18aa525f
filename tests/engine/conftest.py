"""Fixtures for the generation-engine tests: the tiny checkpoint of tests/conftest.py (`checkpoint_dir`)
loaded back."""

import pytest
import torch

from hymba import HymbaForCausalLM
from hymba.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def checkpoint(checkpoint_dir):
    """(model, tokenizer) loaded back from `checkpoint_dir`."""
    return HymbaForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32), load_tokenizer(checkpoint_dir)
