"""Every fast op, and the whole model, against the reference in float64 on the GPU; cached and CUDA-graph
decoding against the full forward.

Each fast op runs on fp32 and bf16 inputs; its reference in float64 on the same values upcast. A check's
error is ||fast - ref|| / ||ref|| of each output and gradient; it must stay under ~1e-4 (fp32) or ~2e-2
(bf16, whose own rounding is 4e-3). The parts run as parallel jobs (each compiles its own kernels); run()
gathers their rows.
"""

from __future__ import annotations

import torch

from ..common import Ctx, metric, model_config

NAME = "check_gpu"
SUITE = "gpu"
DESCRIPTION = "correctness: every fast op (scan, conv, FlexAttention, decode attention) and the model vs float64; " \
              "cached and CUDA-graph decoding vs the full forward; the engine's greedy output alone vs batched"
DEFAULT = True
EST_S = 5  # gathering the parallel jobs' rows

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
SIZES = dict(scan=((2, 1000, 384, 16), (3, 77, 200, 16)), conv=(2, 700, 384), attn_T=900, model_T=400,
             decode=(3, 150, 70), model=dict(hidden_size=320, num_attention_heads=5, num_key_value_heads=1,
                                             intermediate_size=640, num_hidden_layers=6, mamba_dt_rank=20,
                                             sliding_window=96, global_attn_idx=[0, 5],
                                             kv_reuse_group=[[1, 2], [3, 4]], vocab_size=1000))
SMOKE = dict(scan=((1, 70, 16, 4),), conv=(1, 20, 16), attn_T=96, model_T=20, decode=(2, 10, 6), model={})
ACTIVATIONS = {"u", "delta", "z", "B", "C", "x", "q", "k", "v"}
SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cast_inputs(inputs: dict, dtype) -> dict:
    """Activations in `dtype`, parameters (A, D, biases, states) in fp32, as the model feeds the kernels."""
    return {k: (v.to(dtype) if k in ACTIVATIONS else v.float()) for k, v in inputs.items()}


class Checker:
    def __init__(self, ctx: Ctx, dtypes=None, shard=(0, 1)):
        self.ctx, self.dev, self.rows = ctx, ctx.device, []
        self.sizes = dict(SIZES, **SMOKE) if ctx.smoke else SIZES
        self.dtypes = dtypes or (torch.float32, torch.bfloat16)
        self.shard = shard
        if ctx.smoke:
            from hymba.ops.gpu import build_triton_kernels

            self.kernels = build_triton_kernels(require_cuda=False, conv="triton")
        else:
            self.kernels = "auto"

    def record(self, name: str, errors: dict, tol: float, **extra) -> None:
        worst = max(errors.values())
        ok = worst == worst and worst <= tol  # NaN fails
        self.rows.append(dict(check=name, worst=worst, tol=tol, ok=ok, errors=errors, **extra))
        self.ctx.log(f"{'ok  ' if ok else 'FAIL'} {name:<58} worst {worst:9.2e} (tol {tol:.0e})  "
                     + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))

    def grads_vs(self, fast_fn, ref_fn, inputs: dict, out_names=("y",)) -> dict:
        """fast on `inputs`, ref on the same values in float64: outputs, and the gradients of a random
        projection of them."""
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

    # ---- the scan ---------------------------------------------------------------------------------------------
    def scan_inputs(self, batch, L, d, N, dtype) -> dict:
        g = torch.Generator(device=self.dev).manual_seed(batch * L)
        r = lambda *s: torch.randn(*s, device=self.dev, generator=g)  # noqa: E731
        x = dict(u=r(batch, L, d), delta=r(batch, L, d) - 2, A=-torch.exp(r(d, N) * 0.5) * 2, B=r(batch, L, N),
                 C=r(batch, L, N), D=r(d), z=r(batch, L, d), delta_bias=r(d) * 0.3, initial_state=r(batch, d, N))
        x["delta"][0, L // 3: L // 2] = float("-inf")  # padding
        return cast_inputs(x, dtype)

    def scan_kernels_vs(self, x: dict, fwd_config=None, segments=None) -> dict:
        """scan_fwd (saving checkpoints; `fwd_config`, `segments`: None = the heuristics' choice), then
        scan_bwd, against the chunked reference in float64 through autograd."""
        from hymba.ops.scan import selective_scan_chunked
        from hymba.ops.scan.triton import scan_bwd, scan_fwd

        ref_in = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
        refs = selective_scan_chunked(**ref_in)
        y, final, ckpt = scan_fwd(**x, save_states=True, config=fwd_config, segments=segments)
        errors = dict(y=rel(y, refs[0]), final=rel(final, refs[1]))
        wy, wf = (torch.randn_like(r) for r in refs)
        ((refs[0] * wy).sum() + (refs[1] * wf).sum()).backward()
        grads = scan_bwd(*(x[k] for k in SCAN_ARGS), True, ckpt, wy.to(y.dtype), wf.to(final.dtype),
                         segments=segments)
        for k, g in zip(SCAN_ARGS + ("initial_state",), grads):
            if k in x:
                errors["d" + k] = rel(g, ref_in[k].grad)
        return errors

    def scan(self):
        """Forward (one lane and two lanes per channel) + backward at each size and dtype (shardable: the
        cases numbered k mod m), and the in-place decode step."""
        from hymba.ops.scan import selective_state_step
        from hymba.ops.scan.triton import launch, ssm_step_triton

        k, m = self.shard
        cases = [(dt, s) for dt in self.dtypes for s in self.sizes["scan"]]
        for i, (dtype, (batch, L, d, N)) in enumerate(cases):
            if i % m != k:
                continue
            x = self.scan_inputs(batch, L, d, N, dtype)
            for lanes, cfg in (("1 lane", {}), ("2 lanes", launch.FWD_SPLIT)):
                self.record(f"scan fwd ({lanes}) + bwd {str(dtype)[6:]} B={batch} L={L} d={d} N={N}",
                            self.scan_kernels_vs(x, fwd_config=cfg), TOL[dtype] * (2 if dtype == torch.bfloat16 else 1))
        if k != 0:
            return
        d, N = self.sizes["scan"][0][2:]
        for dtype in self.dtypes:
            state = torch.randn(4, d, N, device=self.dev)
            s2 = state.double().clone()
            u, dt, z = (torch.randn(4, d, device=self.dev).to(dtype) for _ in range(3))
            Bv, Cv = (torch.randn(4, N, device=self.dev).to(dtype) for _ in range(2))
            A_log = torch.log(torch.rand(d, N, device=self.dev) + 0.1)  # the step takes the stored parameter
            D, bias = (torch.randn(d, device=self.dev).to(dtype) for _ in range(2))  # as stored: the model's dtype
            y = ssm_step_triton(state, u, dt, A_log, Bv, Cv, D, z, bias, True)
            y2 = selective_state_step(s2, *(t.double() for t in (u, dt, A_log, Bv, Cv, D, z, bias)), True)
            self.record(f"ssm step (in place) {str(dtype)[6:]}", dict(y=rel(y, y2), state=rel(state, s2)), TOL[dtype])

    def segments(self):
        """The scan with time segments inside the kernels (what few rows run), forced: 1000 steps are 63
        chunks, so 4 segments of 16 chunks and a ragged last one."""
        from hymba.ops.scan import selective_scan_chunked
        from hymba.ops.scan.triton import scan_fwd

        for dtype in self.dtypes:
            tol = TOL[dtype] * (2 if dtype == torch.bfloat16 else 1)
            x = self.scan_inputs(*self.sizes["scan"][0], dtype)
            B, L = x["u"].shape[:2]
            self.record(f"scan fwd + bwd in 4 time segments {str(dtype)[6:]} B={B} L={L}",
                        self.scan_kernels_vs(x, segments=4), tol)
            got = scan_fwd(**x, segments=4)
            want = selective_scan_chunked(**{k: v.double() for k, v in x.items()})
            self.record(f"scan inference in 4 time segments {str(dtype)[6:]} B={B} L={L}",
                        dict(y=rel(got[0], want[0]), final=rel(got[1], want[1])), tol)

    # ---- conv, attention ------------------------------------------------------------------------------------
    def conv(self):
        from hymba.ops.conv import causal_conv1d_ref, causal_conv1d_step_ref
        from hymba.ops.conv.triton_conv import causal_conv1d_triton, conv_step_triton, fla_causal_conv1d

        impls = {"triton": causal_conv1d_triton}
        try:
            impls["fla"] = fla_causal_conv1d()
        except ImportError as e:
            self.ctx.log(f"     (fla-core not importable: {e})")
        (batch, L, d), K, dev = self.sizes["conv"], 4, self.dev
        for name, fn in impls.items():
            for dtype in self.dtypes:
                for with_state in (False, True):
                    x = dict(x=torch.randn(batch, L, d, device=dev), weight=torch.randn(d, K, device=dev) * 0.5,
                             bias=torch.randn(d, device=dev))
                    if with_state:
                        x["initial_state"] = torch.randn(batch, K - 1, d, device=dev)
                    x = {k: v.to(dtype) for k, v in x.items()}
                    errors = self.grads_vs(lambda **a: fn(**a, activation="silu"),
                                           lambda **a: causal_conv1d_ref(**a, activation="silu"), x, ("y", "final"))
                    self.record(f"conv[{name}] fwd+bwd {str(dtype)[6:]} state={with_state}", errors, TOL[dtype])
        for dtype in self.dtypes:
            xs, st = torch.randn(8, d, device=dev).to(dtype), torch.randn(8, 3, d, device=dev).to(dtype)
            w, b = torch.randn(d, 4, device=dev).to(dtype), torch.randn(d, device=dev).to(dtype)
            st2 = st.double().clone()
            y = conv_step_triton(xs, st, w, b)
            y2 = causal_conv1d_step_ref(xs.double(), st2, w.double(), b.double())
            self.record(f"conv step (in place) {str(dtype)[6:]}", dict(y=rel(y, y2), state=rel(st, st2)), TOL[dtype])
        self.rotary()
        self.norms()

    def norms(self):
        """The fused norm groups at hymba-1.5b's widths (decode and prefill rows) against float64."""
        from hymba.ops.norm import norm_average_ref, segment_norms_ref
        from hymba.ops.norm.triton_norm import norm_average_triton, segment_norms_triton

        for dtype in self.dtypes:
            for rows in (64, 2000):
                a, b = (torch.randn(rows, 3200, device=self.dev).to(dtype) for _ in range(2))
                wa, wb = (torch.rand(3200, device=self.dev).add(0.5).to(dtype) for _ in range(2))
                got = norm_average_triton(a, b, wa, wb, 1e-6, 1e-6)
                want = norm_average_ref(*(t.double() for t in (a, b, wa, wb)), 1e-6, 1e-6)
                x = torch.randn(rows, 132, device=self.dev).to(dtype)
                ws = [torch.rand(n, device=self.dev).add(0.5).to(dtype) for n in (100, 16, 16)]
                parts = segment_norms_triton(x, (100, 16, 16), ws, [1e-6] * 3)
                exact = segment_norms_ref(x.double(), (100, 16, 16), [w.double() for w in ws], [1e-6] * 3)
                self.record(f"norm average + dt/B/C norms {str(dtype)[6:]} rows={rows}",
                            dict(average=rel(got, want), **{n: rel(p, e) for n, p, e in zip("dBC", parts, exact)}),
                            TOL[dtype])

    def rotary(self):
        """The one-launch rotary of q and k (hymba-1.5b's heads, as views of one projection; decode and prefill
        shapes) against float64; torch's own kernels' error is recorded beside it (one rounding against three)."""
        from hymba.ops.rotary import rotary_ref
        from hymba.ops.rotary.triton_rotary import rotary_triton

        H, Hk, d = 25, 5, 64
        for dtype in self.dtypes:
            for B, T in ((64, 1), (2, 300)):
                slab = torch.randn(B, T, (H + 2 * Hk) * d, device=self.dev).to(dtype)
                q = slab[..., :H * d].view(B, T, H, d).transpose(1, 2)
                k = slab[..., H * d:(H + Hk) * d].view(B, T, Hk, d).transpose(1, 2)
                angles = torch.rand(B, T, d // 2, device=self.dev) * 1000
                cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dtype) for f in (torch.cos, torch.sin))
                got = rotary_triton(q, k, cos, sin)
                exact = rotary_ref(q.double(), k.double(), cos.double(), sin.double())
                same = rotary_ref(q, k, cos, sin)
                errors = dict(q=rel(got[0], exact[0]), k=rel(got[1], exact[1]))
                self.record(f"rotary q+k {str(dtype)[6:]} B={B} T={T}", errors, TOL[dtype],
                            torch_kernels=dict(q=rel(same[0], exact[0]), k=rel(same[1], exact[1])))

    def attention(self):
        """FlexAttention (plain and left-padded, global and window + meta, with gradients; a prefill chunk
        against a cache) and the Triton decode attention (window ring, long global cache, batch 1 and 64)."""
        from hymba.ops.attention import build_sdpa_mask, sdpa_attention
        from hymba.ops.attention.flex import build_flex_mask, flex_attention

        dev, M, W, T = self.dev, 128, 256, self.sizes["attn_T"]
        padded = torch.arange(T, device=dev)[None].repeat(2, 1)
        padded[0, :37], padded[0, 37:] = -1, torch.arange(T - 37, device=dev)
        cases = {"plain": torch.arange(T, device=dev)[None].expand(2, -1), "left-padded": padded}
        for dtype in self.dtypes:
            for case, pos in cases.items():
                for window in (None, W):
                    mask = build_flex_mask(pos, pos, window, M, dtype)
                    assert mask.block_mask is not None or dev.type != "cuda"  # FlexAttention, not a fallback
                    ref_mask = build_sdpa_mask(pos, pos, window, M, torch.float64)
                    x = cast_inputs(dict(q=torch.randn(2, 25, T, 64, device=dev),
                                         k=torch.randn(2, 5, T, 64, device=dev),
                                         v=torch.randn(2, 5, T, 128, device=dev)), dtype)
                    valid = (pos >= 0)[:, None, :, None]  # padding queries are ignored by the model
                    errors = self.grads_vs(lambda **a: flex_attention(**a, mask=mask, scale=0.125) * valid,
                                           lambda **a: sdpa_attention(**a, mask=ref_mask, scale=0.125) * valid, x)
                    kind = "global" if window is None else "window+meta"
                    self.record(f"flex attention {str(dtype)[6:]} {case} {kind}", errors,
                                TOL[dtype] * (1 if dtype == torch.bfloat16 else 10))
            # a prefill chunk of 300 queries after 600 tokens, against the meta tokens, every earlier token
            # (global) or a ring with empty slots (window), then the chunk
            q_pos = (M + 600 + torch.arange(300, device=dev))[None].expand(2, -1)
            earlier = {None: M + torch.arange(600, device=dev), W: torch.full((W,), -1, device=dev)}
            earlier[W][: W - 10] = M + 600 - (W - 10) + torch.arange(W - 10, device=dev)
            for window, before in earlier.items():
                meta = torch.arange(M, device=dev)[None].expand(2, -1)
                k_pos = torch.cat([meta, before[None].expand(2, -1), q_pos], 1)
                self._attend(q_pos, k_pos, window, M, dtype, f"flex attention {str(dtype)[6:]} prefill chunk vs cache")
            # decode steps: a window ring, a long global cache at batch 1 (keys split over programs) and 64
            for window, slots, batch in ((W, W + 1, 2), (None, 3000, 1), (None, 3000, 64)):
                q_pos = torch.randint(1500, 2900, (batch, 1), device=dev)
                k_pos = torch.cat([torch.arange(M, device=dev)[None].expand(batch, -1),
                                   torch.randint(-1, 2900, (batch, slots), device=dev)], 1)
                k_pos[:, -1] = q_pos[:, 0]
                self._attend(q_pos, k_pos, window, M, dtype, f"decode attention {str(dtype)[6:]} batch {batch}")

    def _attend(self, q_pos, k_pos, window, M, dtype, label):
        from hymba.ops.attention import build_sdpa_mask, sdpa_attention
        from hymba.ops.attention.flex import build_flex_mask, flex_attention

        B, S, Tq = k_pos.shape[0], k_pos.shape[1], q_pos.shape[1]
        q = torch.randn(B, 25, Tq, 64, device=self.dev).to(dtype)
        k = torch.randn(B, 5, S, 64, device=self.dev).to(dtype)
        v = torch.randn(B, 5, S, 128, device=self.dev).to(dtype)
        mask = build_flex_mask(q_pos, k_pos, window, M, dtype)
        # one query: the Triton decode kernel (slot positions); more: FlexAttention (a block mask)
        assert self.dev.type != "cuda" or (mask.positions if Tq == 1 else mask.block_mask) is not None
        out = flex_attention(q, k, v, mask, 0.125)
        ref = sdpa_attention(q.double(), k.double(), v.double(),
                             build_sdpa_mask(q_pos, k_pos, window, M, torch.float64), 0.125)
        kind = "global" if window is None else "window+meta"
        self.record(f"{label} {kind} ({Tq} x {S})", dict(y=rel(out, ref)), TOL[dtype])

    def strided(self):
        """Inputs laid out as the model hands them over: head-major views of one projection, one K/V head for
        five query heads, meta tokens first and padding after them."""
        from hymba.ops.attention import build_sdpa_mask, sdpa_attention
        from hymba.ops.attention.flex import build_flex_mask, flex_attention

        dev, M, W, T, H, Hkv, dk = self.dev, 128, 96, 528, 5, 1, 64
        pos = torch.arange(T, device=dev)[None].repeat(2, 1)
        pos[1, M:M + 57] = -1
        pos[1, M + 57:] = torch.arange(M, T - 57, device=dev)
        valid = (pos >= 0)[:, None, :, None]

        def views(p):
            q, k, v = p.split([H * dk, Hkv * dk, Hkv * 2 * dk], dim=-1)
            return (q.view(2, T, H, dk).transpose(1, 2), k.view(2, T, Hkv, dk).transpose(1, 2),
                    v.view(2, T, Hkv, 2 * dk).transpose(1, 2))
        for window in (None, W):
            mask = build_flex_mask(pos, pos, window, M, torch.float32)
            ref_mask = build_sdpa_mask(pos, pos, window, M, torch.float64)
            proj = torch.randn(2, T, H * dk + Hkv * dk + Hkv * 2 * dk, device=dev)
            errors = self.grads_vs(lambda p: flex_attention(*views(p), mask, 0.125) * valid,
                                   lambda p: sdpa_attention(*views(p), ref_mask, 0.125) * valid, dict(p=proj))
            kind = "global" if window is None else "window+meta"
            self.record(f"flex attention fp32 model layout (views, meta, pads) {kind}", errors, 1e-3)

    # ---- the whole model ------------------------------------------------------------------------------------
    def _config(self):
        return model_config(self.ctx, "hymba-1.5b", **self.sizes["model"])

    def model(self):
        """Forward + backward of a small model on a left-padded batch, fp32 and bf16, against the float64
        reference; the same model on the reference kernels in the same dtype is the baseline (bf16 itself is
        far from float64): the fast kernels must not add to its error beyond a small factor."""
        from hymba import HymbaForCausalLM

        cfg, dev, T = self._config(), self.dev, self.sizes["model_T"]
        torch.manual_seed(0)
        ref = HymbaForCausalLM(cfg).to(dev)
        with torch.no_grad():  # move norms, A, D away from their initial values
            for name, p in ref.named_parameters():
                if "norm" in name or name.endswith(("A_log.0", "D.0")):
                    p.add_(torch.randn_like(p) * 0.2)
        state = {k: v.clone() for k, v in ref.state_dict().items()}
        ref = ref.double().set_kernels("reference")
        ids = torch.randint(0, cfg.vocab_size, (2, T), device=dev)
        mask = torch.ones_like(ids)
        mask[1, :T // 7] = 0
        labels = ids.masked_fill(mask == 0, -100)  # no loss on pads, nor on what a pad "predicts"
        labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
        ref_out = ref(ids, attention_mask=mask, labels=labels)
        ref_out.loss.backward()
        real = mask.bool()
        for dtype in self.dtypes:
            errors, base = {}, {}
            for kernels, errs in ((self.kernels, errors), ("reference", base)):
                model = HymbaForCausalLM(cfg, init=False).to(dev)
                model.load_state_dict(state)
                model = model.to(dtype).set_kernels(kernels)
                if kernels is self.kernels:
                    assert model.model.kernels_for(ids.device).name.startswith("triton"), "no fast kernels picked"
                out = model(ids, attention_mask=mask, labels=labels)
                out.loss.backward()
                errs.update(logits=rel(out.logits[real], ref_out.logits[real]), loss=rel(out.loss, ref_out.loss))
                grads = sorted(rel(q.grad, p.grad) for p, q in zip(ref.parameters(), model.parameters()))
                errs["grads(median)"], errs["grads(max)"] = grads[len(grads) // 2], grads[-1]
            tol = TOL[dtype] * (3 if dtype == torch.bfloat16 else 10)
            ok = all(errors[k] <= max(tol, 2 * base[k]) for k in errors)
            name = f"model fwd+bwd {str(dtype)[6:]} (padded batch, {cfg.num_hidden_layers} layers)"
            self.rows.append(dict(check=name, worst=max(errors.values()), tol=tol, ok=ok, errors=errors,
                                  reference_kernels_same_dtype=base))
            self.ctx.log(f"{'ok  ' if ok else 'FAIL'} model fwd+bwd {str(dtype)[6:]}: " + " ".join(
                f"{k}={v:.1e} (reference kernels {base[k]:.1e})" for k, v in errors.items()))

    @torch.no_grad()
    def decode(self):
        """Cached decoding (eager, CUDA graph) against the full forward;
        generate(cuda_graph=True) against eager generate (left padding, an EOS)."""
        from hymba import HymbaForCausalLM
        from hymba.engine import generate, new_cache
        from hymba.engine.cuda_graph import CUDAGraphDecoder

        cfg, dev = self._config(), self.dev
        torch.manual_seed(0)
        model = HymbaForCausalLM(cfg).to(dev).set_kernels(self.kernels)
        B, P, S = self.sizes["decode"]  # past the window: the ring wraps
        ids = torch.randint(0, cfg.vocab_size, (B, P + S), device=dev)
        full = model(ids).logits[:, P - 1:-1]
        cache = new_cache(model, B, P + S)
        steps = [model(ids[:, :P], cache=cache).logits[:, -1]]
        steps += [model(ids[:, t:t + 1], cache=cache).logits[:, -1] for t in range(P, P + S - 1)]
        self.record("decode eager (cache) vs full forward fp32", dict(logits=rel(torch.stack(steps, 1), full)), 1e-4)
        if dev.type != "cuda":
            return
        dec = CUDAGraphDecoder(model, B, P + S)
        steps = [dec.prefill(ids[:, :P]).clone()]
        steps += [dec.step(ids[:, t]).clone() for t in range(P, P + S - 1)]
        self.record("decode CUDA graph vs full forward fp32", dict(logits=rel(torch.stack(steps, 1), full)), 1e-4)
        mask = torch.ones(B, P, dtype=torch.long, device=dev)
        mask[0, :P // 3] = 0
        kw = dict(max_new_tokens=S, eos_token_id=int(ids[1, P + 5]), pad_token_id=0, output_logits=True)
        eager = generate(model, ids[:, :P], mask, cuda_graph=False, **kw)
        graph = generate(model, ids[:, :P], mask, cuda_graph=True, **kw)
        same = eager.sequences.tolist() == graph.sequences.tolist() and eager.finish_reasons == graph.finish_reasons
        finite = torch.isfinite(eager.logits)
        self.record("generate(cuda_graph=True) vs eager generate fp32",
                    dict(logits=rel(graph.logits[finite], eager.logits[finite]), tokens_differ=float(not same)), 1e-4)


    @torch.no_grad()
    def decode_compiled(self):
        """The CUDA graph of the step as torch.compile made it against the full forward (its own job: the
        compilation takes minutes)."""
        from hymba import HymbaForCausalLM
        from hymba.engine.cuda_graph import CUDAGraphDecoder

        cfg, dev = self._config(), self.dev
        if dev.type != "cuda":
            return
        torch.manual_seed(0)
        model = HymbaForCausalLM(cfg).to(dev).set_kernels(self.kernels)
        B, P, S = self.sizes["decode"]
        ids = torch.randint(0, cfg.vocab_size, (B, P + S), device=dev)
        full = model(ids).logits[:, P - 1:-1]
        dec = CUDAGraphDecoder(model, B, P + S, compile=True)
        steps = [dec.prefill(ids[:, :P]).clone()]
        steps += [dec.step(ids[:, t]).clone() for t in range(P, P + S - 1)]
        self.record("decode CUDA graph of the compiled step vs full forward fp32",
                    dict(logits=rel(torch.stack(steps, 1), full)), 1e-4)


    @torch.no_grad()
    def engine(self):
        """The continuous-batching engine in fp32 (decode steps as CUDA graphs on CUDA): each request's greedy
        tokens are the same alone, in a batch it joins mid-flight, and through the eager engine. Prompts over
        the window (the ring wraps) and over a prefill chunk; five requests for four slots (one queues)."""
        from hymba import HymbaForCausalLM
        from hymba.engine import Engine, SamplingParams

        cfg, dev = self._config(), self.dev
        torch.manual_seed(0)
        model = HymbaForCausalLM(cfg).to(dev).set_kernels(self.kernels)
        _, P, S = self.sizes["decode"]
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist()
                   for n in (P, 2 * P + 3, 5, P // 2 + 1, 3 * P)]
        params = SamplingParams(max_tokens=S, temperature=0, ignore_eos=True)
        kw = dict(prefill_chunk_size=16 if self.ctx.smoke else 64, max_model_len=3 * P + S)

        def finish(engine, reqs):
            while engine.has_work():
                engine.step()
            return [r.output_ids for r in reqs]

        one = Engine(model, max_num_seqs=1, **kw)
        alone = [finish(one, [one.add_request(p, params)])[0] for p in prompts]
        eng = Engine(model, max_num_seqs=4, **kw)
        first = [eng.add_request(p, params) for p in prompts[:2]]
        for _ in range(S // 2):
            eng.step()
        together = finish(eng, first + [eng.add_request(p, params) for p in prompts[2:]])
        eager = Engine(model, max_num_seqs=4, cuda_graphs=False, **kw)
        plain = finish(eager, [eager.add_request(p, params) for p in prompts])
        n = len(prompts)
        self.record("engine greedy fp32: mid-flight batch vs alone vs eager",
                    dict(batch_vs_alone=sum(a != b for a, b in zip(together, alone)) / n,
                         eager_vs_alone=sum(a != b for a, b in zip(plain, alone)) / n), 0.0)


PARTS = ("scan", "segments", "conv", "attention", "strided", "model", "decode", "decode_compiled", "engine")


# seconds each part took in one process on a fresh H100 (the scan, segments and attention before the split)
PART_S = dict(scan=366, segments=192, attention=240, conv=20, strided=64, model=95, decode=90, decode_compiled=200, engine=60)


def jobs(ctx: Ctx) -> list[tuple[str, dict, float]]:
    """The parts as parallel jobs, the longest split: the scan in 4 shards, segments and attention by dtype."""
    out = []
    for part in ctx.param("parts", list(PARTS)):
        if part == "scan":
            out += [(f"scan {k}/4", dict(part="scan", shard=[k, 4]), PART_S[part] / 4) for k in range(4)]
        elif part in ("segments", "attention"):
            out += [(f"{part} {d}", dict(part=part, dtype=d), PART_S[part] / 2) for d in DTYPES]
        else:
            out.append((part, dict(part=part), PART_S[part]))
    return out


def job(ctx: Ctx, part: str, shard=(0, 1), dtype: str | None = None) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ck = Checker(ctx, dtypes=(DTYPES[dtype],) if dtype else None, shard=tuple(shard))
    getattr(ck, part)()
    return dict(rows=ck.rows)


def run(ctx: Ctx) -> dict:
    """The parallel jobs' rows (or, run without them, every part here in turn)."""
    rows, crashed = [], []
    if not ctx.job_results:
        results = [dict(label=label, **_inline(ctx, kw)) for label, kw, _ in jobs(ctx)]
    else:  # a part the parallel phase stopped runs again here, alone, if the budget leaves room for it
        planned = {label: (kw, est) for label, kw, est in jobs(ctx)}
        results = []
        for r in ctx.job_results:
            kw, est = planned.get(r["label"], (None, 0.0))
            if r["status"] == "skipped" and kw is not None and ctx.time_left() > 1.5 * est:
                ctx.log(f"running part {r['label']} again, alone (the parallel phase stopped it)")
                r = dict(label=r["label"], **_inline(ctx, kw))
            results.append(r)
    for r in results:
        if r["status"] == "ok":
            rows += r["result"]["rows"]
        else:
            why = (r.get("error") or "").strip().splitlines()
            crashed.append(f"part {r['label']} {r['status']}: {why[-1] if why else ''}")
    failures = [r["check"] for r in rows if not r["ok"]] + crashed
    n_ok = sum(r["ok"] for r in rows)
    return dict(metrics=[
        metric("checks passed", n_ok, f"of {len(rows)}", headline=True,
               compare="each within its tolerance (fp32 1e-4, bf16 2e-2 of the float64 reference; the model: "
                       "twice its error on the reference kernels)"
                       + (f"; {len(crashed)} part(s) did not finish" if crashed else "")),
        metric("checks failed", len(failures), "")],
        details=dict(rows=rows, parts_not_finished=crashed), failures=failures)


def _inline(ctx: Ctx, kw: dict) -> dict:
    try:
        return dict(status="ok", result=job(ctx, **kw))
    except Exception as e:  # a crash is a failed part; the others still run
        import traceback

        traceback.print_exc()
        return dict(status="failed", error=repr(e))
