"""Small model factories and paths shared by the tests."""

import os

import torch

from hymba import HymbaConfig, HymbaForCausalLM


# The project's shared folder (../shared beside the checkout, or $HYMBA_SHARED).
SHARED = os.environ.get("HYMBA_SHARED") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def small_config(**overrides) -> HymbaConfig:
    """Every feature of the release at toy size: 5 layers, globals at 0 and 4, a K/V group of three."""
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=5, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=24, mamba_d_state=3, mamba_d_conv=3, mamba_dt_rank=4, num_memory_tokens=3,
                sliding_window=4, global_attn_idx=[0, 4], kv_reuse_group=[[1, 2, 3]],
                max_position_embeddings=64, orig_max_position_embeddings=16)
    base.update(overrides)
    return HymbaConfig(**base)


def randomized(model: HymbaForCausalLM, seed: int = 0, scale: float = 0.3) -> HymbaForCausalLM:
    """Move every parameter away from its initial value (norm weights off 1, biases off 0, ...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale
            if name.endswith("A_log.0"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif "norm" in name:
                p.copy_(1 + noise)
            else:
                p.add_(noise)
    return model


def random_weights(model: HymbaForCausalLM, seed: int = 0, scale: float = 0.15) -> HymbaForCausalLM:
    """Every parameter moved off its initial value, so that no two tokens tie for the argmax by accident."""
    return randomized(model, seed, scale).eval()


def two_group_config(**overrides) -> HymbaConfig:
    """Global layers 0 and 6, K/V groups of 2 ([1, 2]) and 3 ([3, 4, 5]), 4 meta tokens, window 6."""
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=4, num_memory_tokens=4,
                sliding_window=6, global_attn_idx=[0, 6], kv_reuse_group=[[1, 2], [3, 4, 5]],
                max_position_embeddings=256, orig_max_position_embeddings=64)
    base.update(overrides)
    return HymbaConfig(**base)
