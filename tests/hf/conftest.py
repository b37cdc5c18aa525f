"""Fixtures for the transformers integration: the golden toy checkpoint (NVIDIA's outputs), and a small random
Hymba saved in the released layout with the release's tokenizer files (Llama-2 SentencePiece, 32001 tokens)."""

import os
import shutil

import pytest
import torch
from helpers import randomized, small_lm_config
from hf_helpers import GOLDEN, RELEASE, TOKENIZER_FILES
from safetensors.torch import load_file

import hymba  # noqa: F401  (registers model_type "hymba" with transformers' Auto classes)
from hymba import HymbaForCausalLM


@pytest.fixture(scope="session")
def golden():
    """(checkpoint directory, expected tensors) of the golden toy model."""
    assert os.path.isdir(GOLDEN), f"{GOLDEN} not found; set HYMBA_SHARED to the shared folder"
    return GOLDEN, load_file(os.path.join(GOLDEN, "expected.safetensors"))


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory) -> str:
    """A small random Hymba in the released layout, with the release's tokenizer files beside it."""
    path = str(tmp_path_factory.mktemp("small-hymba-hf"))
    torch.manual_seed(0)
    randomized(HymbaForCausalLM(small_lm_config()), seed=1, scale=0.5).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(RELEASE, name), path)
    return path


@pytest.fixture(scope="session")
def hf_model(hf_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)
