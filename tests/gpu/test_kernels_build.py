"""Every Triton kernel, in every variant the library launches, lowers to Triton IR for a Hopper GPU.

The interpreter-run tests beside this one execute kernels as Python, which accepts code the compiler rejects
(e.g. a loop-carried name that changes type), so such a kernel would first fail on a GPU. The check runs
in a fresh process: this test process defines the kernels interpreted."""

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


def test_scan_backward_compiles_for_hopper_without_spills_and_reduces_by_shuffles():
    """benchmarks/tools/kernel_sass.py takes the scan backward to sm_90 machine code on the CPU: the default launch
    configuration fits in registers (no stack), and its reverse walk sums dB, dC with warp shuffles."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    tool = os.path.join(root, "benchmarks", "tools", "kernel_sass.py")
    out = subprocess.run([sys.executable, tool, "scan backward"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    head, *loop_lines = out.stdout.strip().splitlines()
    assert "0 bytes of stack" in head, head
    assert len(loop_lines) == 3, out.stdout  # chunk loop; its re-run and reverse-walk loops
    assert any("SHFL" in line for line in loop_lines), out.stdout


def test_decode_attention_loads_keys_and_values_as_vectors_when_aligned():
    """kernel_sass.py --aligned compiles as the launcher specialises pointers and strides that are multiples
    of 16: the decode kernel's loop then copies K and V with 16-byte asynchronous loads (LDGSTS); with strides
    not known to be aligned, the same loop is ~3x longer, loading 2 bytes at a time."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    sizes = {}
    for flag in ("--aligned", None):
        cmd = [sys.executable, os.path.join(root, "benchmarks", "tools", "kernel_sass.py"),
               "decode attention {'HAS_WINDOW': True, 'IEEE': False} scale fp32"] + ([flag] if flag else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        loop = out.stdout.strip().splitlines()[-1]
        sizes[flag] = int(loop.split("loop of ")[1].split()[0])
        assert ("LDGSTS" in loop) == (flag == "--aligned"), loop
    assert sizes[None] > 2 * sizes["--aligned"], sizes
