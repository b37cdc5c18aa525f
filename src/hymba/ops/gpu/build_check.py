"""Lower every Triton kernel to Triton IR for a Hopper GPU, on a machine without one.

Triton's CPU interpreter (which the tests run the kernels under) executes kernels as Python and accepts code
that the compiler rejects, e.g. a name that is a compile-time constant before a runtime loop and a tensor
inside it. Such a kernel passes every CPU test and then fails on the GPU at its first launch. The first
compilation stage (Python AST -> Triton IR) is where those errors surface; it needs no GPU and takes
seconds, so it runs here for every kernel, over the compile-time options the library launches it with.

    python -m hymba.ops.gpu.build_check          # exit status 1 if a kernel does not build

Must run in a process where TRITON_INTERPRET is unset (the kernels must be defined compiled, not
interpreted): the test suite runs it as a subprocess.
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback


def _variants(**choices):
    keys = list(choices)
    for values in itertools.product(*(choices[k] for k in keys)):
        yield dict(zip(keys, values))


def kernel_cases():
    """(label, kernel, signature overrides, constexprs, num_warps) for each launch the library makes."""
    from ..attention import decode_triton as dec
    from ..conv import triton_conv as conv
    from ..norm import triton_norm as norm
    from ..rotary import triton_rotary as rot
    from ..scan.triton import backward, forward, launch, segments, step

    act = {n: "*bf16" for n in ("u_ptr", "dt_ptr", "z_ptr", "dy_ptr", "du_ptr", "ddt_ptr", "dz_ptr", "y_ptr")}
    cases = []
    packed = {False: {"b_ptr": "*bf16", "c_ptr": "*bf16"}, True: {"b_ptr": "*i64", "c_ptr": "*i64"}}
    for v in _variants(PACK=(True, False), HAS_Z=(True, False), SAVE=(True, False), SPLIT=(False, True)):
        cfg = dict(launch.FWD_CONFIG, **(launch.FWD_SPLIT if v.pop("SPLIT") else {}))
        const = dict(N=16, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], PB=cfg["PB"], CHUNK=launch.CHUNK, HAS_D=True,
                     HAS_BIAS=True, HAS_H0=True, SOFTPLUS=True, FAST=True, **v)
        cases.append((f"scan forward S={cfg['S']} {v}", forward._scan_fwd_kernel, dict(act, **packed[v["PACK"]]),
                      const, cfg["num_warps"]))
    for v in _variants(PACK=(True, False), HAS_Z=(True, False), HAS_DHT=(True, False)):
        cfg = launch.BWD_CONFIG
        const = dict(N=16, BD=cfg["BD"], S=cfg["S"], T=launch.CHUNK, PF=cfg["PF"], PB=cfg["PB"],
                     SCATTER=cfg["BD"] * cfg["S"] == 32,
                     HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, FAST=True, **v)
        cases.append((f"scan backward {v}", backward._scan_bwd_kernel, dict(act, **packed[v["PACK"]]), const,
                      cfg["num_warps"]))
    for v in _variants(PACK=(True, False), SPLIT=(False, True)):
        cfg = dict(launch.FWD_CONFIG, **(launch.FWD_SPLIT if v.pop("SPLIT") else {}))
        const = dict(N=16, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], HAS_BIAS=True, SOFTPLUS=True, FAST=True, **v)
        cases.append((f"scan state S={cfg['S']} {v}", segments._scan_state_kernel, dict(act, **packed[v["PACK"]]),
                      const, cfg["num_warps"]))
    for v in _variants(PACK=(True, False), HAS_Z=(True, False)):
        cfg = launch.BWD_CONFIG
        const = dict(N=16, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], HAS_BIAS=True, SOFTPLUS=True, FAST=True, **v)
        cases.append((f"scan adjoint {v}", segments._scan_adjoint_kernel, dict(act, **packed[v["PACK"]]), const,
                      cfg["num_warps"]))
    for v in _variants(REVERSE=(False, True), HAS_FIRST=(True, False)):
        cases.append((f"scan stitch {v}", segments._stitch_kernel, {}, dict(N=16, BLOCK=1024, **v), 4))
    cases.append(("ssm step", step._ssm_step_kernel, act, dict(N=16, NP=16, BD=64, HAS_Z=True, HAS_D=True,
                                                              HAS_BIAS=True, SOFTPLUS=True, FAST=True), 4))
    for v in _variants(HAS_BIAS=(True, False), HAS_INIT=(True, False)):
        base = dict(K=4, BD=conv.BD, SILU=True, **v)
        cases.append((f"conv forward {v}", conv._conv_fwd_kernel, {}, dict(base, BL=conv.BL), 4))
        cases.append((f"conv backward, gate {v}", conv._conv_bwd_gate_kernel, {}, dict(base, BL=conv.BL), 4))
    for init in (True, False):
        cases.append((f"conv backward, input HAS_INIT={init}", conv._conv_bwd_input_kernel, {},
                      dict(K=4, BL=conv.BL, BD=conv.BD, HAS_INIT=init), 4))
    cases.append(("conv step", conv._conv_step_kernel, {}, dict(K=4, BD=conv.BD, HAS_BIAS=True, SILU=True), 4))
    for dt in ("*bf16", "*fp32"):
        sig = {n: dt for n in ("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "qo_ptr", "ko_ptr")}
        cases.append((f"rotary {dt}", rot._rotary_kernel, sig, dict(HALF=32, BHALF=32, BH=32), 4))
        sig = {n: dt for n in ("a_ptr", "b_ptr", "wa_ptr", "wb_ptr", "y_ptr")}
        cases.append((f"norm average {dt}", norm._norm_average_kernel, dict(sig, eps_a="fp32", eps_b="fp32"),
                      dict(BD=4096), 8))
        sig = {n: dt for n in ("x_ptr", "w0_ptr", "w1_ptr", "w2_ptr", "y_ptr")}
        cases.append((f"dt/B/C norms {dt}", norm._three_norms_kernel,
                      dict(sig, eps0="fp32", eps1="fp32", eps2="fp32"), dict(B0=128, B1=16, B2=16), 4))
    # a Python float argument is an fp32 scalar when launched directly, an fp64 one from a torch.compile'd
    # graph (the compiled decode step)
    def decode_sig(dt: str, **scalars) -> dict:
        return {"q_ptr": dt, "k_ptr": dt, "v_ptr": dt, "qpos_ptr": "*i32", "kpos_ptr": "*i32", **scalars}
    heads = dict(DK=64, DV=128, BDK=64, BDV=128, BLOCK_M=16)  # hymba-1.5b's, 5 query heads per K/V head
    for v in _variants(HAS_WINDOW=(True, False), IEEE=(True, False), scale=("fp32", "fp64")):
        sig = decode_sig("*fp32" if v["IEEE"] else "*bf16", scale=v.pop("scale"))
        launch = {**dec.LAUNCH, **({} if v["HAS_WINDOW"] else dec.LAUNCH_GLOBAL)}
        const = dict(heads, BLOCK_N=launch["BLOCK_N"], **v)
        cases.append((f"decode attention {v} scale {sig['scale']}", dec._decode_attn_kernel, sig, const,
                      launch["num_warps"]))
    # other key-block widths a `launch=` override may ask for (bf16, the window rule)
    for block_n in (32, 128):
        const = dict(heads, BLOCK_N=block_n, HAS_WINDOW=True, IEEE=False)
        cases.append((f"decode attention BLOCK_N={block_n}", dec._decode_attn_kernel, decode_sig("*bf16"), const, 8))
    for out in ("*bf16", "*fp32"):  # the split-K merge, writing the query's dtype
        cases.append((f"decode attention merge {out}", dec._merge_kernel, {"y_ptr": out},
                      dict(DV=128, BDV=128, BLOCK_S=16), 4))
    return cases


def ast_source(kernel, signature: dict, constexprs: dict, divisible: tuple[str, ...] = ()):
    """The kernel as Triton's compiler takes it: arguments not in `signature` are fp32 pointers (`*_ptr`) or
    int32 scalars. `divisible`: arguments to take as multiples of 16 (bytes for pointers), as Triton's launcher
    specialises them at run time when they are (aligned allocations, strides of 16 or more elements)."""
    from triton.compiler import ASTSource

    names = kernel.arg_names
    missing = set(constexprs) - set(names)
    if missing:
        raise ValueError(f"{kernel.__name__} has no arguments {sorted(missing)}")
    full = {n: "constexpr" if n in constexprs else signature.get(n, "*fp32" if n.endswith("_ptr") else "i32")
            for n in names}
    unknown = set(divisible) - set(names)
    if unknown:
        raise ValueError(f"{kernel.__name__} has no arguments {sorted(unknown)}")
    return ASTSource(fn=kernel, signature=full, constexprs={(names.index(n),): v for n, v in constexprs.items()},
                     attrs={(names.index(n),): [["tt.divisibility", 16]] for n in divisible})


def build_ttir(kernel, signature: dict, constexprs: dict, num_warps: int, arch: int = 90):
    """Python AST -> Triton IR for `arch` (the stage where front-end errors surface); returns the module."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    src = ast_source(kernel, signature, constexprs)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options = backend.parse_options(dict(num_warps=num_warps))
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    return src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                       context)


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("build_check: unset TRITON_INTERPRET (the kernels must be defined compiled)", file=sys.stderr)
        return 2
    failed = 0
    for label, kernel, sig, const, warps in kernel_cases():
        try:
            build_ttir(kernel, sig, const, warps)
            print(f"ok    {label}")
        except Exception as e:  # report every kernel, not just the first failure
            failed += 1
            print(f"FAIL  {label}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
            traceback.print_exc(limit=1)
    print(f"{failed} of {len(kernel_cases())} kernel variants failed to build" if failed else "all kernels build")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
