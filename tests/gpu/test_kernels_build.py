"""Every Triton kernel, in every variant the library launches, lowers to Triton IR for a Hopper GPU.

The interpreter-run tests beside this one execute kernels as Python, which accepts code the compiler rejects
(a loop-carried name changing type once cost a GPU session). The check runs in a fresh process: this test
process defines the kernels interpreted."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_all_kernels_lower_to_triton_ir():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "hymba.ops.gpu.build_check"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert len(lines) >= 29 and "all kernels build" in run.stdout
    for kind in ("scan forward", "scan backward", "ssm step", "conv forward", "conv backward", "conv step",
                 "decode attention"):
        assert any(kind in line for line in lines), kind
