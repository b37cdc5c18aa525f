"""Fixtures for the transformers integration: the golden toy checkpoint (NVIDIA's outputs), and a small random
Hymba saved in the released layout with the release's tokenizer files (Llama-2 SentencePiece, 32001 tokens)."""

import os
import shutil

import pytest
import torch
from helpers import SHARED, randomized
from safetensors.torch import load_file

import hymba  # noqa: F401  (registers model_type "hymba" with transformers' Auto classes)
from hymba import HymbaConfig, HymbaForCausalLM

RELEASE = os.path.join(SHARED, "hymba-1.5b")
GOLDEN = os.path.join(SHARED, "golden", "hymba-toy")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def small_lm_config(**overrides) -> HymbaConfig:
    """Every Hymba feature (global + window layers, a K/V group, meta tokens) at toy width, Hymba's vocabulary."""
    base = dict(vocab_size=32001, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=48, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=4, num_memory_tokens=4,
                sliding_window=8, global_attn_idx=[0, 3], kv_reuse_group=[[1, 2]],
                max_position_embeddings=512, orig_max_position_embeddings=128,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(overrides)
    return HymbaConfig(**base)


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
