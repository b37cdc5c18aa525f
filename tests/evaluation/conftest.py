"""Fixtures for the evaluation tests: the released Hymba tokenizer (Llama-2 SentencePiece, in ../shared) and a
small randomly initialised Hymba with its vocabulary, saved as a checkpoint directory with the tokenizer."""

import os
import shutil

import pytest
import torch
from helpers import SHARED, float64_copy, randomized, small_lm_config

from hymba import HymbaForCausalLM
from hymba.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def shared():
    assert os.path.isdir(SHARED), f"shared folder not found at {SHARED}; set HYMBA_SHARED"
    return SHARED


@pytest.fixture(scope="session")
def eval_data_dir(shared):
    return os.path.join(shared, "data", "eval")


@pytest.fixture(scope="session")
def tokenizer(shared):
    return load_tokenizer(os.path.join(shared, "hymba-1.5b"))


@pytest.fixture(scope="session")
def small_model():
    torch.manual_seed(0)
    return randomized(HymbaForCausalLM(small_lm_config()), seed=1, scale=0.5).eval()


@pytest.fixture(scope="session")
def small_exact(small_model):
    """`small_model` in float64: the oracle of its float32 numbers (helpers.assert_as_accurate_as_reference)."""
    return float64_copy(small_model)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, small_model, shared):
    """The small model saved in the released layout, with Hymba's tokenizer files beside it."""
    path = str(tmp_path_factory.mktemp("small-hymba"))
    small_model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(shared, "hymba-1.5b", name), path)
    return path
