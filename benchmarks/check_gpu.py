"""Check every fast op, and the whole model, against the reference on a CUDA GPU.

Each fast op runs on bf16 (and fp32) inputs; its reference runs in float64 on the same values upcast. The
table reports the relative error ||fast - ref|| / ||ref|| of outputs and of every gradient, and the bound it
must stay under: ~1e-5 for fp32 kernels, ~1e-2 for bf16 inputs and outputs (the rounding of bf16 itself is
4e-3). Inputs are fresh random draws; outputs are checked for NaN.

    python benchmarks/check_gpu.py [--out DIR]      # exit status 1 if any check fails
    python benchmarks/check_gpu.py --smoke          # the same checks, tiny, on the CPU (Triton interpreter)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from hymba import HymbaConfig, HymbaForCausalLM  # noqa: E402
from hymba.engine import generate, new_cache  # noqa: E402
from hymba.ops.attention import build_sdpa_mask, sdpa_attention  # noqa: E402
from hymba.ops.conv import causal_conv1d_ref, causal_conv1d_step_ref  # noqa: E402
from hymba.ops.scan import selective_scan_chunked, selective_state_step  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
rows: list[dict] = []
# Sizes; --smoke shrinks them for a dry run on the CPU under TRITON_INTERPRET=1.
SIZES = dict(scan=((2, 1000, 384, 16), (3, 77, 200, 16)), conv=(2, 700, 384), attn_T=900, model_T=400,
             decode=(3, 150, 70),
             model=dict(hidden_size=320, num_attention_heads=5, num_key_value_heads=1, intermediate_size=640,
                        num_hidden_layers=6, mamba_dt_rank=20, sliding_window=96, global_attn_idx=[0, 5],
                        kv_reuse_group=[[1, 2], [3, 4]], vocab_size=1000))
SMOKE = dict(scan=((1, 70, 16, 4),), conv=(1, 20, 16), attn_T=96, model_T=20, decode=(2, 10, 6),
             model=dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                        num_hidden_layers=3, mamba_dt_rank=4, mamba_d_state=4, sliding_window=8,
                        num_memory_tokens=4, global_attn_idx=[0], kv_reuse_group=[[1, 2]], vocab_size=50))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def record(name: str, errors: dict[str, float], tol: float) -> None:
    worst = max(errors.values())
    ok = worst == worst and worst <= tol  # NaN fails
    rows.append(dict(check=name, worst=worst, tol=tol, ok=ok, errors=errors))
    print(f"{'ok  ' if ok else 'FAIL'} {name:<58} worst {worst:9.2e}  (tol {tol:.0e})  "
          + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)


def grads_vs(fast_fn, ref_fn, inputs: dict, out_names=("y",)) -> dict[str, float]:
    """Run fast on `inputs` as they are and ref on the same values in float64; compare outputs and the
    gradients of a random projection of them."""
    fast_in = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    outs, refs = fast_fn(**fast_in), ref_fn(**ref_in)
    outs = outs if isinstance(outs, tuple) else (outs,)
    refs = refs if isinstance(refs, tuple) else (refs,)
    errors = {n: rel(o, r) for n, o, r in zip(out_names, outs, refs)}
    weights = [torch.randn_like(r) for r in refs]
    sum((o.double() * w).sum() for o, w in zip(outs, weights)).backward()
    sum((r * w).sum() for r, w in zip(refs, weights)).backward()
    for k in inputs:
        if fast_in[k].grad is not None:
            errors["d" + k] = rel(fast_in[k].grad, ref_in[k].grad)
    return errors


KERNELS = "auto"


class SHARD:
    """--shard K/M: this process runs only the scan cases numbered K mod M (the GPU compiles each case's
    kernels for minutes; M processes side by side compile them in parallel)."""
    k, m = 0, 1

    @classmethod
    def mine(cls, i: int) -> bool:
        return i % cls.m == cls.k
ACTIVATIONS = {"u", "delta", "z", "B", "C", "x", "q", "k", "v"}


def cast_inputs(inputs: dict, dtype) -> dict:
    """Activations in `dtype`, parameters (A, D, biases, states) in fp32, like the model feeds the kernels."""
    return {k: (v.to(dtype) if k in ACTIVATIONS else v.float()) for k, v in inputs.items()}


# ---- ops ----------------------------------------------------------------------------------------------------
def scan_inputs(batch, L, d, N, dtype, dev) -> dict:
    g = torch.Generator(device=dev).manual_seed(batch * L)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    x = dict(u=r(batch, L, d), delta=r(batch, L, d) - 2, A=-torch.exp(r(d, N) * 0.5) * 2,
             B=r(batch, L, N), C=r(batch, L, N), D=r(d), z=r(batch, L, d), delta_bias=r(d) * 0.3,
             initial_state=r(batch, d, N))
    x["delta"][0, L // 3: L // 2] = float("-inf")  # padding
    return cast_inputs(x, dtype)


SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_kernels_vs(x: dict, fwd_config: dict | None = None, segments: int | None = None) -> dict[str, float]:
    """Like `grads_vs` for the scan kernels launched directly: scan_fwd (saving its checkpoints) with `fwd_config`
    and `segments` (None: the launch heuristics' choice), then scan_bwd, against the chunked reference in
    float64 through autograd."""
    from hymba.ops.scan.triton import scan_bwd, scan_fwd

    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
    refs = selective_scan_chunked(**ref_in)
    y, final, ckpt = scan_fwd(**x, save_states=True, config=fwd_config, segments=segments)
    errors = dict(y=rel(y, refs[0]), final=rel(final, refs[1]))
    wy, wf = (torch.randn_like(r) for r in refs)
    ((refs[0] * wy).sum() + (refs[1] * wf).sum()).backward()
    # the gradients autograd would hand the op: cast to the outputs' dtypes
    grads = scan_bwd(*(x[k] for k in SCAN_ARGS), True, ckpt, wy.to(y.dtype), wf.to(final.dtype), segments=segments)
    for k, g in zip(SCAN_ARGS + ("initial_state",), grads):
        if k in x:
            errors["d" + k] = rel(g, ref_in[k].grad)
    return errors


def check_scan(dev):
    from hymba.ops.scan.triton import launch, ssm_step_triton

    for dtype in (torch.float32, torch.bfloat16):
        for i, (batch, L, d, N) in enumerate(SIZES["scan"]):
            if not SHARD.mine(i + len(SIZES["scan"]) * (dtype == torch.bfloat16)):
                continue
            x = scan_inputs(batch, L, d, N, dtype, dev)
            # the forward with each channel on one lane and split over two (the launch picks by the rows)
            for lanes, cfg in (("1 lane", {}), ("2 lanes", launch.FWD_SPLIT)):
                errors = scan_kernels_vs(x, fwd_config=cfg)
                record(f"scan fwd ({lanes}) + bwd {str(dtype)[6:]} B={batch} L={L} d={d} N={N}", errors,
                       TOL[dtype] * (2 if dtype == torch.bfloat16 else 1))
        if not SHARD.mine(0):
            continue
        # decode step, in place
        d, N = SIZES["scan"][0][2:]
        state = torch.randn(4, d, N, device=dev)
        s2 = state.double().clone()
        u, dt, z = (torch.randn(4, d, device=dev).to(dtype) for _ in range(3))
        Bv, Cv = (torch.randn(4, N, device=dev).to(dtype) for _ in range(2))
        A, D, bias = -torch.rand(d, N, device=dev) - 0.1, torch.randn(d, device=dev), torch.randn(d, device=dev)
        y = ssm_step_triton(state, u, dt, A, Bv, Cv, D, z, bias, True)
        y2 = selective_state_step(s2, *(t.double() for t in (u, dt, A, Bv, Cv, D, z, bias)), True)
        record(f"ssm step (in place) {str(dtype)[6:]}", dict(y=rel(y, y2), state=rel(state, s2)), TOL[dtype])


def check_scan_segments(dev):
    """The scan with time segments inside the kernels (what few rows run), forced here: 1000 steps are 63
    chunks, so 4 segments of 16 chunks and a ragged last one; the entering states and adjoints stitched."""
    from hymba.ops.scan.triton import scan_fwd

    for dtype in (torch.float32, torch.bfloat16):
        tol = TOL[dtype] * (2 if dtype == torch.bfloat16 else 1)
        x = scan_inputs(*SIZES["scan"][0], dtype, dev)
        B, L = x["u"].shape[:2]
        errors = scan_kernels_vs(x, segments=4)
        record(f"scan fwd + bwd in 4 time segments {str(dtype)[6:]} B={B} L={L}", errors, tol)
        got = scan_fwd(**x, segments=4)
        want = selective_scan_chunked(**{k: v.double() for k, v in x.items()})
        record(f"scan inference in 4 time segments {str(dtype)[6:]} B={B} L={L}",
               dict(y=rel(got[0], want[0]), final=rel(got[1], want[1])), tol)


def check_conv(dev):
    from hymba.ops.conv.triton_conv import causal_conv1d_triton, conv_step_triton, fla_causal_conv1d

    impls = {"triton": causal_conv1d_triton}
    try:
        impls["fla"] = fla_causal_conv1d()
    except ImportError as e:
        print(f"     (fla-core not importable: {e})")
    for name, fn in impls.items():
        for dtype in (torch.float32, torch.bfloat16):
            for with_state in (False, True):
                (batch, L, d), K = SIZES["conv"], 4
                x = dict(x=torch.randn(batch, L, d, device=dev), weight=torch.randn(d, K, device=dev) * 0.5,
                         bias=torch.randn(d, device=dev))
                if with_state:
                    x["initial_state"] = torch.randn(batch, K - 1, d, device=dev)
                x = cast_inputs(x, dtype)
                x["weight"], x["bias"] = x["weight"].to(dtype), x["bias"].to(dtype)
                if "initial_state" in x:
                    x["initial_state"] = x["initial_state"].to(dtype)
                errors = grads_vs(lambda **a: fn(**a, activation="silu"),
                                  lambda **a: causal_conv1d_ref(**a, activation="silu"), x, ("y", "final"))
                record(f"conv[{name}] fwd+bwd {str(dtype)[6:]} state={with_state}", errors, TOL[dtype])
    for dtype in (torch.float32, torch.bfloat16):
        d = SIZES["conv"][2]
        xs, st = torch.randn(8, d, device=dev).to(dtype), torch.randn(8, 3, d, device=dev).to(dtype)
        w, b = torch.randn(d, 4, device=dev).to(dtype), torch.randn(d, device=dev).to(dtype)
        st2 = st.double().clone()
        y = conv_step_triton(xs, st, w, b)
        y2 = causal_conv1d_step_ref(xs.double(), st2, w.double(), b.double())
        record(f"conv step (in place) {str(dtype)[6:]}", dict(y=rel(y, y2), state=rel(st, st2)), TOL[dtype])


def check_attention(dev):
    from hymba.ops.attention.flex import build_flex_mask, flex_attention

    M, W = 128, 256
    cases = {
        "plain": lambda T: (torch.arange(T, device=dev)[None].expand(2, -1),) * 2,
        "left-padded": lambda T: (_padded_positions(T, dev),) * 2,
    }
    for dtype in (torch.float32, torch.bfloat16):
        for case, make in cases.items():
            for window in (None, W):
                T = SIZES["attn_T"]
                q_pos, k_pos = make(T)
                mask = build_flex_mask(q_pos, k_pos, window, M, dtype)
                assert mask.block_mask is not None or dev.type != "cuda"
                ref_mask = build_sdpa_mask(q_pos, k_pos, window, M, torch.float64)
                x = dict(q=torch.randn(2, 25, T, 64, device=dev), k=torch.randn(2, 5, T, 64, device=dev),
                         v=torch.randn(2, 5, T, 128, device=dev))
                x = cast_inputs(x, dtype)
                valid = (q_pos >= 0)[:, None, :, None]  # padding queries are ignored by the model
                errors = grads_vs(lambda **a: flex_attention(**a, mask=mask, scale=0.125) * valid,
                                  lambda **a: sdpa_attention(**a, mask=ref_mask, scale=0.125) * valid, x)
                record(f"flex attention {str(dtype)[6:]} {case} {'global' if window is None else 'window+meta'}",
                       errors, TOL[dtype] * (1 if dtype == torch.bfloat16 else 10))
        # a prefill chunk against a cache (lengths of neither a multiple of FlexAttention's blocks): 300
        # queries after 600 tokens; keys: the meta tokens, then every earlier token (global) or a ring with
        # empty slots (window), then the chunk
        q_pos = (M + 600 + torch.arange(300, device=dev))[None].expand(2, -1)
        earlier = {None: M + torch.arange(600, device=dev), W: torch.full((W,), -1, device=dev)}
        earlier[W][: W - 10] = M + 600 - (W - 10) + torch.arange(W - 10, device=dev)
        for window, before in earlier.items():
            k_pos = torch.cat([torch.arange(M, device=dev)[None].expand(2, -1), before[None].expand(2, -1), q_pos], 1)
            mask = build_flex_mask(q_pos, k_pos, window, M, dtype)
            assert mask.block_mask is not None or dev.type != "cuda"
            q = torch.randn(2, 25, 300, 64, device=dev).to(dtype)
            k = torch.randn(2, 5, k_pos.shape[1], 64, device=dev).to(dtype)
            v = torch.randn(2, 5, k_pos.shape[1], 128, device=dev).to(dtype)
            out = flex_attention(q, k, v, mask, 0.125)
            ref = sdpa_attention(q.double(), k.double(), v.double(), build_sdpa_mask(q_pos, k_pos, window, M,
                                                                                     torch.float64), 0.125)
            kind = "global" if window is None else "window+meta"
            record(f"flex attention {str(dtype)[6:]} prefill chunk vs cache {kind} (300 x {k_pos.shape[1]})",
                   dict(y=rel(out, ref)), TOL[dtype])
        # decode steps (the Triton decode kernel on CUDA): a window ring and a long global cache, a batch
        # large enough for one program per K/V head and batch 1 (keys split over programs, then merged)
        for window, slots, batch in ((W, W + 1, 2), (None, 3000, 1), (None, 3000, 64)):
            q_pos = torch.randint(1500, 2900, (batch, 1), device=dev)
            k_pos = torch.cat([torch.arange(M, device=dev)[None].expand(batch, -1),
                               torch.randint(-1, 2900, (batch, slots), device=dev)], 1)
            k_pos[:, -1] = q_pos[:, 0]
            mask = build_flex_mask(q_pos, k_pos, window, M, dtype)
            assert mask.positions is not None or dev.type != "cuda"
            ref_mask = build_sdpa_mask(q_pos, k_pos, window, M, torch.float64)
            q = torch.randn(batch, 25, 1, 64, device=dev).to(dtype)
            k = torch.randn(batch, 5, k_pos.shape[1], 64, device=dev).to(dtype)
            v = torch.randn(batch, 5, k_pos.shape[1], 128, device=dev).to(dtype)
            out = flex_attention(q, k, v, mask, 0.125)
            ref = sdpa_attention(q.double(), k.double(), v.double(), ref_mask, 0.125)
            kind = "global" if window is None else "window+meta"
            record(f"decode attention {str(dtype)[6:]} {kind} batch {batch} ({k_pos.shape[1]} slots)",
                   dict(y=rel(out, ref)), TOL[dtype])


def check_attention_strided(dev):
    """Inputs laid out as the model hands them over: head-major views of one projection [B, T, features],
    one K/V head for five query heads, meta tokens first and padding after them (the model check's shapes)."""
    from hymba.ops.attention.flex import build_flex_mask, flex_attention

    M, W, T, H, Hkv, dk = 128, 96, 528, 5, 1, 64
    pos = torch.arange(T, device=dev)[None].repeat(2, 1)
    pos[1, M:M + 57] = -1
    pos[1, M + 57:] = torch.arange(M, T - 57, device=dev)
    for window in (None, W):
        mask = build_flex_mask(pos, pos, window, M, torch.float32)
        ref_mask = build_sdpa_mask(pos, pos, window, M, torch.float64)
        proj = torch.randn(2, T, H * dk + Hkv * dk + Hkv * 2 * dk, device=dev)
        valid = (pos >= 0)[:, None, :, None]

        def views(p):
            q, k, v = p.split([H * dk, Hkv * dk, Hkv * 2 * dk], dim=-1)
            return (q.view(2, T, H, dk).transpose(1, 2), k.view(2, T, Hkv, dk).transpose(1, 2),
                    v.view(2, T, Hkv, 2 * dk).transpose(1, 2))
        kind = "global" if window is None else "window+meta"
        errors = grads_vs(lambda p: flex_attention(*views(p), mask, 0.125) * valid,
                          lambda p: sdpa_attention(*views(p), ref_mask, 0.125) * valid, dict(p=proj))
        record(f"flex attention fp32 model layout (views, meta, pads) {kind}", errors, 1e-3)


def _padded_positions(T, dev):
    pos = torch.arange(T, device=dev)[None].repeat(2, 1)
    pos[0, :37] = -1
    pos[0, 37:] = torch.arange(T - 37, device=dev)
    return pos


# ---- the whole model ----------------------------------------------------------------------------------------
def check_decode_only(dev):
    """Cached decoding (eager and CUDA graph) against the full forward, without the gradient checks."""
    cfg = HymbaConfig.from_preset("hymba-1.5b", **SIZES["model"])
    torch.manual_seed(0)
    model = HymbaForCausalLM(cfg).to(dev).set_kernels(KERNELS)
    check_decode(model, cfg, dev)


def check_model(dev):
    cfg = HymbaConfig.from_preset("hymba-1.5b", **SIZES["model"])
    torch.manual_seed(0)
    ref = HymbaForCausalLM(cfg).to(dev)
    with torch.no_grad():  # move norms, A, D, dt bias away from their initial values
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith(("A_log.0", "D.0")):
                p.add_(torch.randn_like(p) * 0.2)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    ref = ref.double().set_kernels("reference")
    ids = torch.randint(0, cfg.vocab_size, (2, SIZES["model_T"]), device=dev)
    mask = torch.ones_like(ids)
    mask[1, :SIZES["model_T"] // 7] = 0
    # Ignore pad targets and the predictions made at pads (the last pad "predicts" the first real token: the
    # output at a pad position is unspecified by the model's contract).
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    ref_out = ref(ids, attention_mask=mask, labels=labels)
    ref_out.loss.backward()
    real = mask.bool()
    for dtype in (torch.float32, torch.bfloat16):
        # The same model in the same dtype on the reference kernels is the baseline: the whole model in bf16
        # (weights, every matmul's output) is far from float64 whatever the kernels; the fast kernels must not
        # add to that error beyond a small factor.
        errors, base = {}, {}
        for kernels, errs in ((KERNELS, errors), ("reference", base)):
            model = HymbaForCausalLM(cfg, init=False).to(dev)
            model.load_state_dict(ref_state)
            model = model.to(dtype).set_kernels(kernels)
            if kernels is KERNELS:
                assert model.model.kernels_for(ids.device).name.startswith("triton"), "no fast kernels picked"
            out = model(ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            errs.update(logits=rel(out.logits[real], ref_out.logits[real]), loss=rel(out.loss, ref_out.loss))
            grads = [rel(q.grad, p.grad) for p, q in zip(ref.parameters(), model.parameters())]
            errs["grads(median)"] = sorted(grads)[len(grads) // 2]
            errs["grads(max)"] = max(grads)
        tol = TOL[dtype] * (3 if dtype == torch.bfloat16 else 10)
        ok = all(errors[k] <= max(tol, 2 * base[k]) for k in errors)
        rows.append(dict(check=f"model {str(dtype)[6:]}", worst=max(errors.values()), tol=tol, ok=ok,
                         errors=errors, reference_kernels_same_dtype=base))
        print(f"{'ok  ' if ok else 'FAIL'} model fwd+bwd {str(dtype)[6:]} (padded batch, {cfg.num_hidden_layers} layers): "
              + " ".join(f"{k}={v:.1e} (reference kernels {base[k]:.1e})" for k, v in errors.items()), flush=True)


@torch.no_grad()
def check_decode(model, cfg, dev):
    from hymba.engine.cuda_graph import CUDAGraphDecoder

    model.zero_grad(set_to_none=True)
    B, P, S = SIZES["decode"]  # past the window (96): the ring wraps
    ids = torch.randint(0, cfg.vocab_size, (B, P + S), device=dev)
    full = model(ids).logits[:, P - 1:-1]
    cache = new_cache(model, B, P + S)
    eager = [model(ids[:, :P], cache=cache).logits[:, -1]]
    eager += [model(ids[:, t:t + 1], cache=cache).logits[:, -1] for t in range(P, P + S - 1)]
    record("decode eager (cache) vs full forward fp32", dict(logits=rel(torch.stack(eager, 1), full)), 1e-4)
    if dev.type != "cuda":
        return
    dec = CUDAGraphDecoder(model, B, P + S)
    graph = [dec.prefill(ids[:, :P]).clone()]
    graph += [dec.step(ids[:, t]).clone() for t in range(P, P + S - 1)]
    record("decode CUDA graph vs full forward fp32", dict(logits=rel(torch.stack(graph, 1), full)), 1e-4)
    dec = CUDAGraphDecoder(model, B, P + S, compile=True)
    graph = [dec.prefill(ids[:, :P]).clone()]
    graph += [dec.step(ids[:, t]).clone() for t in range(P, P + S - 1)]
    record("decode CUDA graph of the compiled step vs full forward fp32",
           dict(logits=rel(torch.stack(graph, 1), full)), 1e-4)
    # generate(): the CUDA-graph path (rows finishing at different steps stay in the graph's batch) against
    # the eager path that drops them, left padding and an EOS included
    mask = torch.ones(B, P, dtype=torch.long, device=dev)
    mask[0, :P // 3] = 0
    kw = dict(max_new_tokens=S, eos_token_id=int(ids[1, P + 5]), pad_token_id=0, output_logits=True)
    eager = generate(model, ids[:, :P], mask, cuda_graph=False, **kw)
    graph = generate(model, ids[:, :P], mask, cuda_graph=True, **kw)
    same = eager.sequences.tolist() == graph.sequences.tolist() and eager.finish_reasons == graph.finish_reasons
    finite = torch.isfinite(eager.logits)
    record("generate(cuda_graph=True) vs eager generate fp32",
           dict(logits=rel(graph.logits[finite], eager.logits[finite]), tokens_differ=float(not same)), 1e-4)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for check_gpu.json")
    ap.add_argument("--only", default=None, help="comma list of: scan,segments,conv,attention,strided,model,decode "
                    "(model: forward and gradients of a small model; decode: cached and CUDA-graph decoding)")
    ap.add_argument("--shard", default="0/1", help="K/M: only the scan cases numbered K mod M (parallel runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (TRITON_INTERPRET=1): a dry run")
    args = ap.parse_args()
    SHARD.k, SHARD.m = map(int, args.shard.split("/"))
    global KERNELS
    if args.smoke:
        from hymba.ops.gpu.interpreter import use_cpu_interpreter

        use_cpu_interpreter()
        from hymba.ops.gpu import build_triton_kernels

        SIZES.update(SMOKE)
        KERNELS = build_triton_kernels(require_cuda=False, conv="triton")
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("check_gpu.py needs a CUDA GPU")
    else:
        dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import triton

    device_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke)"
    print(f"{device_name} | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    t0 = time.time()
    parts = dict(scan=check_scan, segments=check_scan_segments, conv=check_conv, attention=check_attention,
                 strided=check_attention_strided, model=check_model, decode=check_decode_only)
    for name, fn in parts.items():
        if args.only and name not in args.only.split(","):
            continue
        t = time.time()
        try:
            fn(dev)
        except Exception as e:  # a crash is a failed check, and the others still run
            import traceback

            traceback.print_exc()
            rows.append(dict(check=name, worst=float("nan"), tol=0, ok=False, errors={"crash": repr(e)}))
        print(f"     [{name}: {time.time() - t:.0f} s]", flush=True)
    n_bad = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows) - n_bad}/{len(rows)} checks passed in {time.time() - t0:.0f} s")
    if args.out:
        out = dict(device=device_name, torch=torch.__version__, triton=triton.__version__, checks=rows)
        atomic_write_text(os.path.join(args.out, "check_gpu.json"), json.dumps(out, indent=1, default=str))
    sys.exit(1 if n_bad else 0)


if __name__ == "__main__":
    main()
