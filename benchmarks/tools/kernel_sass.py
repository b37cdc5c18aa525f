"""Count the machine instructions of a Triton kernel's loops for a Hopper GPU, on any machine (no GPU needed).

Triton compiles a kernel all the way to an sm_90 cubin on a CPU (its wheel ships ptxas and nvdisasm). The
inner loop of a scan kernel runs once per time step, so its instruction mix per step (FMA, MUFU, shuffles,
loads, integer work) says where the issue slots go before any GPU time is spent. This is how the scan kernels
were tuned (benchmarks/README.md, "scan"): e.g. it showed softplus' log2 compiling to ~25 instructions a step.

    python benchmarks/tools/kernel_sass.py                       # list the kernel variants (build_check's)
    python benchmarks/tools/kernel_sass.py "scan backward" [--set BD=32 --set S=1] [--aligned] [--dump FILE]

Takes the first variant whose label contains the text; `--set` overrides its compile-time constants. Prints
registers, spills and, for every loop (a backward branch), its length and most frequent opcodes.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

_INSTR = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(.*)")


def compile_sm90(kernel, signature: dict, constexprs: dict, num_warps: int, divisible: tuple[str, ...] = ()):
    """The CompiledKernel (cubin inside) for sm_90, built without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    from hymba.ops.gpu.build_check import ast_source

    return triton.compile(ast_source(kernel, signature, constexprs, divisible), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps))


def _tool(name: str, cubin: bytes, *args: str) -> str:
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        exe = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        return subprocess.run([exe, *args, f.name], capture_output=True, text=True, check=True).stdout


def resources(cubin: bytes) -> dict:
    usage = _tool("cuobjdump", cubin, "-res-usage")
    return {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", usage)}


def loops(sass: str) -> list[tuple[int, collections.Counter]]:
    """(instructions, opcode counts) of each loop: the span from a label to a branch back to it."""
    instr, label_at, pending = [], {}, None
    for line in sass.splitlines():
        if m := re.match(r"^\.(L_x_\d+):", line):
            pending = m.group(1)
        elif m := _INSTR.match(line):
            addr = int(m.group(1), 16)
            instr.append((addr, m.group(2), m.group(3)))
            if pending:
                label_at[pending], pending = addr, None
    found = []
    for addr, op, rest in instr:
        target = re.search(r"`\(\.(L_x_\d+)\)", rest) if op == "BRA" else None
        if target and label_at.get(target.group(1), addr + 1) < addr:
            body = [o for a, o, _ in instr if label_at[target.group(1)] <= a <= addr]
            found.append((len(body), collections.Counter(body)))
    return found


def main() -> int:
    from hymba.ops.gpu.build_check import kernel_cases

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", nargs="?", help="text of a build_check label, e.g. 'scan backward'")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a constexpr")
    ap.add_argument("--dump", help="write the whole SASS here")
    ap.add_argument("--aligned", action="store_true",
                    help="take every pointer and stride (s_*) as a multiple of 16, as Triton's launcher specialises "
                         "them when they are: without it, loads along a contiguous axis cannot be vectorised")
    ap.add_argument("--divisible", default="", metavar="A,B", help="other arguments to take as multiples of 16")
    args = ap.parse_args()
    cases = kernel_cases()
    if not args.variant:
        print("\n".join(label for label, *_ in cases))
        return 0
    match = [c for c in cases if args.variant in c[0]]
    if not match:
        print(f"kernel_sass: no variant label contains {args.variant!r}", file=sys.stderr)
        return 2
    label, kernel, sig, const, warps = match[0]
    for item in args.set:
        name, _, value = item.partition("=")
        const[name] = {"True": True, "False": False}.get(value, int(value) if value.lstrip("-").isdigit() else value)
    divisible = [n for n in args.divisible.split(",") if n]
    if args.aligned:
        divisible += [n for n in kernel.arg_names if n not in const and (n.endswith("_ptr") or n.startswith("s_"))]
    ck = compile_sm90(kernel, sig, const, warps, tuple(divisible))
    cubin = ck.asm["cubin"]
    sass = _tool("nvdisasm", cubin, "-c")
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(sass)
    res = resources(cubin)
    aligned = " (pointers and strides aligned)" if args.aligned else ""
    print(f"{label} {args.set or ''}{aligned}: {res.get('reg')} registers, {res.get('stack', 0)} bytes of stack "
          "(spills)")
    for n, ops in loops(sass):
        print(f"  loop of {n} instructions: " + ", ".join(f"{op} {c}" for op, c in ops.most_common(12)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
