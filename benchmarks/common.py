"""What the benchmarks share: the context a benchmark runs in, timing, model builders, analytic floors
(bytes a decode step moves, model FLOPs) and the machine's description."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


class Skip(Exception):
    """Raised by a benchmark that cannot run here (e.g. a CUDA graph under --smoke): recorded as skipped."""


@dataclass
class Ctx:
    """What a benchmark's run() gets. `warm`: a warm-up job of the GPU suite's parallel phase: run the code
    that will be timed once, at stand-in sizes, so that its kernels and compiled graphs land in the on-disk
    caches (Triton, Inductor) before the timed run; time nothing. `smoke`: tiny shapes on the CPU."""

    name: str
    suite: str
    smoke: bool = False
    warm: bool = False
    params: dict = field(default_factory=dict)  # --param NAME.KEY=VALUE, as strings
    deadline: float | None = None  # time.time() by which the suite's budget is spent
    job_results: list | None = None  # the results of this benchmark's parallel jobs, if it has any

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.suite == "gpu" and not self.smoke else "cpu")

    def param(self, key: str, default):
        """--param NAME.KEY=VALUE, converted to the default's type (lists: comma-separated)."""
        if key not in self.params:
            return default
        raw = str(self.params[key])
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, (list, tuple)):
            kind = type(default[0]) if default else str
            return [kind(v) for v in raw.split(",") if v]
        return type(default)(raw) if default is not None else raw

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def log(self, *parts) -> None:
        print(*parts, flush=True)


def metric(name: str, value, unit: str, *, headline: bool = False, compare: str | None = None, **refs) -> dict:
    """One number of a benchmark; `compare` says in words what it stands against (floor, baseline, target),
    `refs` hold those references as numbers."""
    return dict(name=name, value=value, unit=unit, headline=headline, compare=compare, refs=refs)


# ---- timing --------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn, device: torch.device):
    """(seconds, result) of one call, the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def time_ms(fn, device: torch.device, warmup: int = 3, reps: int = 10) -> dict:
    """Median and minimum milliseconds per call after `warmup` calls: CUDA events around each call on a
    GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return dict(median_ms=statistics.median(times), min_ms=min(times), reps=reps)


def copy_bandwidth(device: torch.device, small: bool = False) -> float:
    """Bytes read + written per second by a large copy (1 GiB on a GPU, 64 MiB on the CPU), the best of 10:
    what the machine can do, the reference of the floors."""
    n = (2**20 if small else 256 * 2**20) if device.type == "cuda" else (2**18 if small else 16 * 2**20)
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), device, warmup=2, reps=10)["min_ms"]
    return 2 * a.nbytes / (ms * 1e-3)


def matmul_rate(device: torch.device, small: bool = False) -> float:
    """FLOP/s of a square matmul, the best of 10: bf16 8192^2 on a GPU, fp32 1024^2 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    n = 64 if small else n
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = time_ms(lambda: a @ b, device, warmup=2, reps=10)["min_ms"]
    return 2 * n**3 / (ms * 1e-3)


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak of the GPUs we know (MFU's denominator); None for others."""
    for key, peak in (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12)):
        if key in device_name:
            return peak
    return None


# ---- models --------------------------------------------------------------------------------------------------
# Under --smoke: a tiny model with every kind of layer (global, window, window reusing K/V).
SMOKE_MODEL = dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                   num_hidden_layers=3, mamba_dt_rank=4, mamba_d_state=4, sliding_window=8, num_memory_tokens=4,
                   global_attn_idx=[0], kv_reuse_group=[[1, 2]], vocab_size=50)
# In a warm-up job: the same widths, one layer of each kind (the kernels and compiled graphs are per kind).
STAND_IN = dict(num_hidden_layers=3, global_attn_idx=[0], kv_reuse_group=[[1, 2]])


def model_config(ctx: Ctx, preset: str = "hymba-1.5b", **overrides):
    from hymba import HymbaConfig

    if ctx.smoke:
        overrides = {**SMOKE_MODEL, **overrides}
    elif ctx.warm:
        overrides = {**STAND_IN, **overrides}
    return HymbaConfig.from_preset(preset, **overrides)


def fast_kernels(ctx: Ctx):
    """The GPU kernel bundle: our Triton conv (fla-core's autotunes ~20 launches per signature first);
    under --smoke the same kernels on the CPU, run by Triton's interpreter."""
    if ctx.smoke:
        from hymba.ops.gpu import build_triton_kernels

        return build_triton_kernels(require_cuda=False, conv="triton")
    return "triton-conv"


def build_model(ctx: Ctx, config, dtype: torch.dtype = torch.bfloat16, kernels=True, seed: int = 0):
    """A model with the library's random initialisation (no checkpoint needed: speed does not depend on the
    values), on the benchmark's device, in eval mode."""
    from hymba import HymbaForCausalLM

    torch.manual_seed(seed)
    with torch.device(ctx.device):
        model = HymbaForCausalLM(config)
    model = model.to(dtype).eval()
    if kernels:
        model.set_kernels(fast_kernels(ctx) if kernels is True else kernels)
    return model


def random_ids(vocab: int, shape: tuple, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g).to(device)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# ---- analytic floors -----------------------------------------------------------------------------------------
def decode_step_bytes(config, batch: int, context: int, dtype_bytes: int = 2) -> dict:
    """Bytes one decode step must move at `context` tokens: every weight once (the tied embedding as the LM
    head), the K/V each layer attends over (global layers the whole context, window layers the meta tokens
    and the ring; layers reusing K/V read it again), the fp32 SSM states read and written, the conv states."""
    from hymba import HymbaForCausalLM

    c = config
    with torch.device("meta"):
        weights = HymbaForCausalLM(c, init=False).num_parameters() * dtype_bytes
    kv_row = c.num_key_value_heads * (c.head_dim + c.v_head_dim) * dtype_bytes
    M, ring = c.num_memory_tokens, (c.sliding_window or 0) + 1
    kv = sum(batch * kv_row * (M + (context if c.is_global(i) else min(ring, context)))
             for i in range(c.num_hidden_layers))
    ssm = 2 * c.num_hidden_layers * batch * c.d_inner * c.mamba_d_state * 4 if c.use_ssm else 0
    conv = 2 * c.num_hidden_layers * batch * (c.mamba_d_conv - 1) * c.d_inner * dtype_bytes if c.use_ssm else 0
    return dict(weights=weights, kv=kv, ssm_state=ssm, conv_state=conv, total=weights + kv + ssm + conv)


def visible_keys(T: int, window: int | None, M: int) -> int:
    """Sum over queries 0..T-1 (meta tokens first) of the keys each sees: causal, or the window plus the
    meta tokens."""
    q = torch.arange(T, dtype=torch.float64)
    if window is None:
        return int((q + 1).sum())
    in_window = torch.minimum(q + 1, torch.tensor(window + 1.0))
    meta_outside = torch.clamp(torch.minimum(q - window, torch.tensor(float(M))), min=0)
    return int((in_window + meta_outside).sum())


def model_flops(config, batch: int, text_len: int, backward: bool, head_tokens: int | None = None) -> dict:
    """Model FLOPs of a forward (x3 with the backward): the matmuls (2 x weights x tokens; the layers see the
    meta tokens too, the LM head `head_tokens` per row, default every text token) and attention scores and
    values over the keys each query sees. The scan, norms and elementwise work are bandwidth, not counted."""
    from hymba import HymbaForCausalLM

    c = config
    T = c.num_memory_tokens + text_len
    with torch.device("meta"):
        model = HymbaForCausalLM(c, init=False)
    layer_params = sum(p.numel() for n, p in model.named_parameters()
                       if p.dim() == 2 and "embed_tokens" not in n and "lm_head" not in n and "A_log" not in n)
    head = c.vocab_size * c.hidden_size * (text_len if head_tokens is None else head_tokens)
    factor = 3 if backward else 1
    matmul = 2 * factor * (layer_params * batch * T + head * batch)
    attn = sum(2 * c.num_attention_heads * (c.head_dim + c.v_head_dim) * batch
               * visible_keys(T, None if c.is_global(i) else c.sliding_window, c.num_memory_tokens)
               for i in range(c.num_hidden_layers))
    return dict(matmul=matmul, attention=factor * attn, total=matmul + factor * attn)


# ---- the machine -------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    # BENCH_COMMIT: the commit of a copied working tree whose .git is not its own (a remote run)
    return dict(commit=os.environ.get("BENCH_COMMIT") or git("rev-parse", "HEAD") or None,
                dirty=bool(git("status", "--porcelain", "--", "src", "benchmarks", ":!benchmarks/results")))


def machine_info(use_cuda: bool) -> dict:
    """Where a benchmark ran. `use_cuda`: ask torch for the GPU (initialises CUDA); else nvidia-smi, if any."""
    info = dict(host=platform.node(), cpu=_cpu_name(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, triton=_version("triton"),
                transformers=_version("transformers"), gpu=None, gpu_memory_GiB=None, **git_commit())
    if use_cuda and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_GiB=round(props.total_memory / 2**30, 1))
    else:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout.splitlines()
            if out:
                name, mib = out[0].rsplit(",", 1)
                info.update(gpu=name.strip(), gpu_memory_GiB=round(float(mib) / 1024, 1))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return info


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- generation through the public API ------------------------------------------------------------------------
def generate_seconds(model, ids: torch.Tensor, new_tokens: int, **kw) -> float:
    """Wall seconds of one greedy `hymba.engine.generate` call making exactly `new_tokens` per row (EOS
    suppressed by min_new_tokens), the device synchronised before and after. The previous call's CUDA-graph
    decoder is collected first: it holds its static cache (11 GB at batch 128, 8k) in a reference cycle."""
    import gc

    from hymba.engine import generate

    gc.collect()
    seconds, _ = wall(lambda: generate(model, ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw),
                      model.device)
    return seconds


def decode_protocol(model, ids: torch.Tensor, new: int, **kw) -> dict:
    """The decode protocol: random prompt, greedy, min_new_tokens = max_new_tokens; tokens/s = batch x new /
    (wall(new + 1 tokens) - wall(1 token)), both after a warm-up call, so that prefill, the CUDA graph's
    capture and the first token cancel out."""
    generate_seconds(model, ids, new + 1, **kw)  # warm-up: every kernel compiled, the allocator settled
    first = generate_seconds(model, ids, 1, **kw)
    total = generate_seconds(model, ids, new + 1, **kw)
    return dict(first_token_s=first, total_s=total, step_ms=(total - first) / new * 1e3,
                tokens_per_s=ids.shape[0] * new / (total - first))
