"""Turn the JSON results of the benchmark scripts into the markdown tables of benchmarks/results/.

    python benchmarks/report.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from hymba.utils import atomic_write_text  # noqa: E402


def _load(folder: str, name: str):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def scan_md(r: dict) -> str:
    s = r["shape"]
    lines = [f"## Selective scan (B={s['batch']}, L={s['L']}, d_inner={s['d']}, N={s['N']}, bf16 inputs), {r['device']}",
             "",
             f"Copy bandwidth measured in the same run: {r['copy_bandwidth_TBps']:.2f} TB/s (read + write). Forward "
             f"floor: {r['floor_bytes'] / 1e9:.3f} GB (u, delta, z, B, C read once, y written once) = "
             f"{r['floor_ms']:.3f} ms.", "",
             "| kernel | config | ms | GB/s | of copy-bandwidth floor |", "|---|---|---|---|---|"]
    for k, v in r["forward"].items():
        lines.append(f"| forward | {k} | {v['ms']:.3f} | {v['GBps']:.0f} | {v['of_copy_bw']:.1%} |")
    if "forward_saving_states_ms" in r:
        lines.append(f"| forward, saving chunk states (training) | default | {r['forward_saving_states_ms']:.3f} | | |")
    lines += ["", "| forward + backward | config | ms | x forward floor |", "|---|---|---|---|"]
    for k, v in r["forward_backward"].items():
        if "ms" in v:
            lines.append(f"| triton | {k} | {v['ms']:.3f} | {v['x_forward_floor']:.2f} |")
    for k, v in r.get("forward_backward_previous_kernel", {}).items():
        lines.append(f"| triton, previous kernel | {k} | {v['ms']:.3f} | {v['x_forward_floor']:.2f} |")
    notes = [v["note"] for v in r["forward_backward"].values() if "note" in v]
    for mode, v in r.get("reference", {}).items():
        note = "" if v["measured_batch"] == s["batch"] else f" (measured at batch {v['measured_batch']}, scaled)"
        lines.append(f"| torch reference {mode.replace('_', '+')}{note} | | {v['ms']:.2f} | |")
    lines += [f"\nNote: {n}" for n in notes]
    sm = r.get("summary", {})
    if sm:
        lines += ["", f"Speed-up over the torch reference: forward {sm['speedup_vs_torch_forward']:.0f}x, "
                  f"forward+backward {sm['speedup_vs_torch_forward_backward']:.0f}x."]
    conv = r.get("conv")
    if conv:
        lines += ["", f"Causal conv (same activation shape, K=4, silu; floor {conv['floor_ms']:.3f} ms):", "",
                  "| conv | forward ms | forward+backward ms |", "|---|---|---|"]
        for k, v in conv.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['forward_ms']:.3f} | {v['forward_backward_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def e2e_md(r: dict) -> str:
    lines = [f"## End to end at {r['context']} context, random bf16 weights, {r['device']}", "",
             "| model | params | prefill tok/s (batch 1) | decode tok/s | decode batch | ms/step | peak GB | cache GB | decode mode |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        d = m["decode"]
        mode = d.get("mode", "CUDA graph")
        lines.append(f"| {name} | {m['params'] / 1e9:.2f} B | {m['prefill']['tokens_per_s']:.0f} | "
                     f"{d['tokens_per_s']:.0f} | {d['batch']} | {d['step_ms']:.1f} | {d['peak_memory_GB']:.1f} | "
                     f"{d['cache_GB']:.2f} | {mode} |")
        if "decode_compiled" in m:
            e = m["decode_compiled"]
            lines.append(f"| {name} (compiled step) | | | {e['tokens_per_s']:.0f} | {e['batch']} | {e['step_ms']:.1f} | "
                         f"{e['peak_memory_GB']:.1f} | | CUDA graph of the torch.compile'd step |")
        if "decode_eager" in m:
            e = m["decode_eager"]
            lines.append(f"| {name} (eager step) | | | {e['tokens_per_s']:.0f} | {e['batch']} | {e['step_ms']:.1f} | | | eager |")
    hymba = r["models"].get("Hymba-1.5B", {})
    for other, m in r["models"].items():
        if other == "Hymba-1.5B" or "decode" not in m:
            continue
        for key, how in (("decode", "CUDA graph"), ("decode_compiled", "CUDA graph of the compiled step")):
            if key in hymba:
                v = hymba[key]["tokens_per_s"] / m["decode"]["tokens_per_s"]
                lines.append(f"\nDecode speed-up of Hymba-1.5B ({how}) over {other}: **{v:.2f}x**")
    return "\n".join(lines) + "\n"


def train_md(r: dict) -> str:
    lines = [f"## Training step, hymba-1.5b at {r['context']} context, {r['device']}", "",
             f"bf16 matmul measured: {r['measured_matmul_TFLOPs']:.0f} TFLOP/s; MFU against {r['peak_TFLOPs']:.0f}.", "",
             "| mode | batch | ms/step | tokens/s | model TFLOP/step | MFU | of measured matmul | peak GB |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, v in r["runs"].items():
        lines.append(f"| {mode} | {v['batch']} | {v['step_s'] * 1e3:.0f} | {v['tokens_per_s']:.0f} | "
                     f"{v['flops']['total'] / 1e12:.1f} | {v['mfu']:.1%} | {v['mfu_vs_measured']:.1%} | "
                     f"{v['peak_memory_GB']:.1f} |")
    return "\n".join(lines) + "\n"


def segments_md(r: dict) -> str:
    lines = [f"## Selective scan in time segments side by side (d_inner=3200, N=16, bf16), {r['device']}", "",
             "| shape | pass | segments: ms | the heuristic of that run picked |", "|---|---|---|---|"]
    for name, v in r["shapes"].items():
        times = ", ".join(f"{p}: {ms:.3f}" for p, ms in v["ms"].items())
        lines.append(f"| {name} | {'forward + backward' if v['gradients'] else 'forward'} | {times} | {v['heuristic']} |")
    return "\n".join(lines) + "\n"


def kernel_segments_md(r: dict) -> str:
    """bench_scan.py --fwd-segments / --bwd-segments: time segments inside the scan kernels."""
    fwd = any("save_states" in v for v in r["shapes"].values())
    lines = [f"## Scan {'forward' if fwd else 'backward'} with time segments inside the kernel "
             f"(d_inner={r['d']}, N={r['N']}, bf16), {r['device']}", "",
             "(the heuristic's pick is that of the code the run measured; benchmarks/README.md has the rule now)", "",
             "| shape | segments: ms | fastest | the heuristic's pick | largest difference from one pass |",
             "|---|---|---|---|---|"]
    for name, v in r["shapes"].items():
        ms = v["ms"]
        best = min(ms, key=ms.get)
        times = ", ".join(f"{k}: {t:.3f}" for k, t in ms.items())
        if "rows_segmented" in v:
            times += f"; rows scanned twice in {v['rows_segmented']['segments']}: {v['rows_segmented']['ms']:.3f}"
        pick = str(v["heuristic"])
        lines.append(f"| {name} | {times} | {best} ({ms['1'] / ms[best]:.2f}x) | {pick} ({ms['1'] / ms[pick]:.2f}x) | "
                     f"{max(v['max_rel_diff'].values()):.1e} |")
    return "\n".join(lines) + "\n"


def conv_md(r: dict) -> str:
    lines = [f"## Causal conv (K=4, silu, bf16), {r['device']}", "",
             "| shape | kernels | forward ms | forward + backward ms |", "|---|---|---|---|"]
    for shape, v in r["shapes"].items():
        for name, t in v.items():
            if isinstance(t, dict):
                lines.append(f"| {shape} | {name} | {t['forward_ms']:.3f} | {t['forward_backward_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def _kinds_table(kinds: dict, kernel_ms: float) -> list[str]:
    """GPU time by kind of work (profile_train.py's kinds), largest first."""
    lines = ["| work | ms | share | kernels |", "|---|---|---|---|"]
    for kind, v in sorted(kinds.items(), key=lambda kv: -kv[1]["ms"]):
        lines.append(f"| {kind} | {v['ms']:.1f} | {v['ms'] / kernel_ms:.1%} | {v['calls']:.0f} |")
    return lines


def profile_train_md(r: dict) -> str:
    lines = [f"## Where a training step's GPU time goes: {r['mode']}, batch {r['batch']} x {r['context']}, {r['device']}",
             "", f"Step {r['step_ms']:.0f} ms; kernel time {r['kernel_ms']:.0f} ms in {r['kernels_per_step']:.0f} kernels.",
             "", *_kinds_table(r["kinds"], r["kernel_ms"])]
    return "\n".join(lines) + "\n"


def profile_prefill_md(r: dict) -> str:
    lines = [f"## Where a prefill's GPU time goes (through the cache, bf16), {r['device']}"]
    for name, run in r["runs"].items():
        lines += ["", f"### {name}: {run['ms']:.1f} ms, {run['tokens_per_s']:.0f} tok/s; kernel time "
                  f"{run['kernel_ms']:.1f} ms in {run['kernels']:.0f} kernels", "", *_kinds_table(run["kinds"], run["kernel_ms"])]
    return "\n".join(lines) + "\n"


def flex_prefill_md(r: dict) -> str:
    lines = [f"## FlexAttention at prefill shapes through the cache, static vs dynamic lengths, {r['device']}", "",
             "| shape, layer, compiled for | ms | first call s | max difference from static |", "|---|---|---|---|"]
    for name, v in r["runs"].items():
        lines.append(f"| {name} | {v['ms']:.3f} | {v['first_call_s']:.1f} | {v['max_diff_vs_static']:.1e} |")
    return "\n".join(lines) + "\n"


def flex_md(r: dict) -> str:
    lines = [f"## FlexAttention at a training step ({r['batch']} x {r['tokens']} tokens, {r['heads']}/{r['kv_heads']} "
             f"heads, dk {r['dk']}, dv {r['dv']}), {r['device']}", "",
             "| mask | options | forward ms | forward + backward ms | forward TFLOP/s | backward TFLOP/s |",
             "|---|---|---|---|---|---|"]
    for mask, m in r["masks"].items():
        for name, v in m["variants"].items():
            lines.append(f"| {mask} | {name} | {v['forward_ms']:.3f} | {v['forward_backward_ms']:.3f} | "
                         f"{v['forward_TFLOPs']:.0f} | {v['backward_TFLOPs']:.0f} |")
    return "\n".join(lines) + "\n"


def ssm_proj_md(r: dict) -> str:
    lines = [f"## The SSM's small projections, {r['rows']} rows, {r['device']}", "",
             "| projection | padded width | forward ms | forward + backward ms |", "|---|---|---|---|"]
    for proj in ("x_proj", "dt_proj"):
        for width, v in r[proj].items():
            lines.append(f"| {proj} | {width} | {v['forward_ms']:.3f} | {v['forward_backward_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def decode_attention_md(r: dict) -> str:
    lines = [f"## Decode attention, batch {r['batch']}, {r['context']} context, {r['device']}", "",
             f"Copy bandwidth {r['copy_bandwidth_TBps']:.2f} TB/s; default launch {r['default']}. A step's attention "
             f"(global + window layers): default {r['step_attention_default_ms']:.2f} ms, fastest per kind "
             f"{r['step_attention_best_ms']:.2f} ms.", "",
             "| layer | BLOCK_N | warps | stages | ms | GB/s | of copy bandwidth |", "|---|---|---|---|---|---|---|"]
    for kind, layer in r["layers"].items():
        for run in sorted((x for x in layer["runs"] if "ms" in x), key=lambda x: x["ms"]):
            c = run["launch"]
            lines.append(f"| {kind} ({layer['slots']} slots) | {c['BLOCK_N']} | {c['num_warps']} | {c['num_stages']} | "
                         f"{run['ms']:.4f} | {run['GBps']:.0f} | {run['of_copy_bw']:.0%} |")
    return "\n".join(lines) + "\n"


def check_md(r: dict) -> str:
    lines = [f"## Correctness on {r['device']} (torch {r['torch']}, triton {r['triton']})", "",
             "Relative error ||fast - ref|| / ||ref|| against float64 on the same (upcast) inputs; worst of the "
             "outputs and gradients.", "", "| check | worst | bound | |", "|---|---|---|---|"]
    for c in r["checks"]:
        worst = c["worst"] if isinstance(c["worst"], float) else float("nan")
        bound = f"{c['tol']:.0e}"
        if "reference_kernels_same_dtype" in c:  # whole-model rows: bounded by the reference kernels' own error
            base = max(c["reference_kernels_same_dtype"].values())
            bound = f"max({bound}, 2 x reference kernels' {base:.1e})"
        lines.append(f"| {c['check']} | {worst:.1e} | {bound} | {'ok' if c['ok'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    parts = []
    checks = sorted(f for f in os.listdir(args.results) if f.startswith("check_gpu") and f.endswith(".json"))
    logs = sorted(f for f in os.listdir(args.results) if f.startswith("check_gpu") and f.endswith(".log"))
    if checks or logs:
        md = "\n".join(f"### {name}\n\n" + check_md(_load(args.results, name)) for name in checks)
        for name in logs:  # runs cut short before writing their JSON: their check lines as printed
            with open(os.path.join(args.results, name)) as f:
                kept = [line.rstrip() for line in f if line.startswith(("ok ", "FAIL"))]
            if kept:
                md += f"\n### {name}\n\n```\n" + "\n".join(kept) + "\n```\n"
        atomic_write_text(os.path.join(args.results, "check_gpu.md"), md)
        parts.append(md)
    for name, fn in (("scan.json", scan_md), ("scan_segments.json", segments_md), ("conv.json", conv_md),
                     ("e2e.json", e2e_md), ("e2e_hymba.json", e2e_md), ("train.json", train_md),
                     ("train_batch6.json", train_md), ("profile_train_compiled.json", profile_train_md),
                     ("flex_options.json", flex_md), ("ssm_proj.json", ssm_proj_md),
                     ("decode_attention.json", decode_attention_md), ("e2e_session7.json", e2e_md),
                     ("train_bwd_segments.json", train_md), ("scan_fwd_segments.json", kernel_segments_md),
                     ("scan_bwd_segments.json", kernel_segments_md), ("profile_prefill.json", profile_prefill_md),
                     ("profile_prefill_before.json", profile_prefill_md), ("flex_prefill.json", flex_prefill_md),
                     ("e2e_session8.json", e2e_md), ("train_session8.json", train_md)):
        r = _load(args.results, name)
        if r is not None:
            md = fn(r)
            atomic_write_text(os.path.join(args.results, name.replace(".json", ".md")), md)
            parts.append(md)
    print("\n".join(parts))


if __name__ == "__main__":
    main()
