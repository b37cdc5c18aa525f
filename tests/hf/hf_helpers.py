"""What the transformers-integration tests share: the release's folders and a small Hymba config with the
release's vocabulary (a module of its own: several test folders have a conftest.py, so `import conftest` would be
ambiguous)."""

import os

from helpers import SHARED

from hymba import HymbaConfig

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
