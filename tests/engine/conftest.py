"""Fixtures for the generation-engine tests: small models with every cache feature, a byte-level BPE
tokenizer trained here with the `tokenizers` library, and a checkpoint directory holding both."""

import os

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.engine.tokenizer import Tokenizer, load_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. Hymba runs attention heads and SSM heads side by side.",
    "Meta tokens come first; the window slides; the global layers see everything. héllo 🙂 世界 naïve café",
    "<|user|>hello there\n<|assistant|>hi! how can I help?\n<|system|>be brief\n",
] * 20


SHARED = os.environ.get("HYMBA_SHARED") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))


@pytest.fixture(scope="session")
def llama_tokenizer() -> Tokenizer:
    """The released Hymba-1.5B tokenizer (Llama-2 SentencePiece BPE with byte fallback, in ../shared)."""
    path = os.path.join(SHARED, "hymba-1.5b")
    assert os.path.isdir(path), f"{path} not found; set HYMBA_SHARED to the shared folder"
    return load_tokenizer(path)


def random_weights(model: HymbaForCausalLM, seed: int = 0, scale: float = 0.15) -> HymbaForCausalLM:
    """Every parameter moved off its initial value, so that no two tokens tie for the argmax by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith("A_log.0"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif "norm" in name:
                p.copy_(1 + noise)
            else:
                p.add_(noise)
    return model.eval()


def two_group_config(**overrides) -> HymbaConfig:
    """Global layers 0 and 6, K/V groups of 2 ([1, 2]) and 3 ([3, 4, 5]), 4 meta tokens, window 6."""
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=4, num_memory_tokens=4,
                sliding_window=6, global_attn_idx=[0, 6], kv_reuse_group=[[1, 2], [3, 4, 5]],
                max_position_embeddings=256, orig_max_position_embeddings=64)
    base.update(overrides)
    return HymbaConfig(**base)


@pytest.fixture(scope="session")
def byte_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TRAIN_TEXT, trainer)
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                     add_bos_token=True, chat_template=CHAT_TEMPLATE)


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
