import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and helpers

from helpers import SHARED  # noqa: E402

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
