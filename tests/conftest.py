import os
import sys

# The Triton kernels (tests/gpu) run under Triton's CPU interpreter, which Triton picks when a kernel is
# defined: switched on before anything can import one.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and helpers

from helpers import SHARED, random_weights  # noqa: E402

from hymba import HymbaConfig, HymbaForCausalLM  # noqa: E402
from hymba.tokenizer import Tokenizer, load_tokenizer  # noqa: E402

# One thread per test process: the suite runs as 2 xdist workers on 2-core machines, and oversubscribed
# OpenMP threads make small ops hundreds of times slower.
torch.set_num_threads(1)


@pytest.fixture
def shared_dir():
    """The project's shared folder (../shared beside the checkout, or $HYMBA_SHARED). Its absence is an error,
    not a skip: the golden checkpoint and the evaluation data are part of what the suite checks."""
    assert os.path.isdir(SHARED), f"shared folder not found at {SHARED}; set HYMBA_SHARED to its path"
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tokenizers for the tokenizer, engine and evaluation tests: the release's, and a byte-level BPE trained here with the
# `tokenizers` library (with a chat template of its own).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. Hymba runs attention heads and SSM heads side by side.",
    "Meta tokens come first; the window slides; the global layers see everything. héllo 🙂 世界 naïve café",
    "<|user|>hello there\n<|assistant|>hi! how can I help?\n<|system|>be brief\n",
] * 20




@pytest.fixture(scope="session")
def llama_tokenizer() -> Tokenizer:
    """The released Hymba-1.5B tokenizer (Llama-2 SentencePiece BPE with byte fallback, in ../shared)."""
    path = os.path.join(SHARED, "hymba-1.5b")
    assert os.path.isdir(path), f"{path} not found; set HYMBA_SHARED to the shared folder"
    return load_tokenizer(path)


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
    """A tiny Hymba checkpoint in the released layout with the byte-level tokenizer (and its chat template)
    saved beside it (the engine and server tests; tests/evaluation has its own)."""
    path = str(tmp_path_factory.mktemp("tiny-checkpoint"))
    torch.manual_seed(0)
    config = HymbaConfig.from_preset("tiny", vocab_size=byte_tokenizer.vocab_size, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=3)
    random_weights(HymbaForCausalLM(config), seed=1).save_pretrained(path)
    byte_tokenizer.save(path)
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    return path
