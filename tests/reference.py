"""An independent, deliberately naive Hymba forward written from the format document (section 5) alone.

It reads tensors by their official names from a plain state dict and computes in float64 with explicit
loops (per head, per time step, per key): no code is shared with the package. Tests use it as the oracle
for the model on every configuration option.
"""

from __future__ import annotations

import math

import torch


def rmsnorm(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rope_tables(positions, d, cfg):
    theta = cfg["rope_theta"]
    kind = cfg.get("rope_type") or "default"
    stretch_to = cfg["max_position_embeddings"] if kind == "ntk" else max(positions) + 1
    if kind == "ntk" or (kind == "dynamic_ntk" and stretch_to > cfg["orig_max_position_embeddings"]):
        theta = theta * (2 * stretch_to / cfg["orig_max_position_embeddings"] - 1) ** (d / (d - 2))
    inv = [theta ** (-(2 * i) / d) for i in range(d // 2)]
    ang = torch.tensor([[p * f for f in inv] for p in positions], dtype=torch.float64)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rope(x, cos, sin):  # x [T, d]
    half = x.shape[-1] // 2
    rot = torch.cat([-x[:, half:], x[:, :half]], dim=-1)
    return x * cos + rot * sin


def visible(q, k, window, M):
    if k > q:
        return False
    if window is None:
        return True
    return q - k <= window or k < M


def forward(sd: dict, cfg: dict, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), vocab] for one unpadded sequence."""
    sd = {k: v.double() for k, v in sd.items()}
    d = cfg["hidden_size"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dk = d // H
    di = cfg.get("mamba_expand", 2) * d
    dv = di // H
    N, K, R = cfg["mamba_d_state"], cfg["mamba_d_conv"], cfg["mamba_dt_rank"]
    eps = cfg["rms_norm_eps"]
    M = cfg["num_memory_tokens"]
    L = cfg["num_hidden_layers"]
    groups = cfg.get("kv_reuse_group") or []
    producer = {i: i for i in range(L)}
    for g in groups:
        for i in g:
            producer[i] = g[0]
    window = cfg.get("sliding_window")
    global_idx = set(cfg.get("global_attn_idx") or [])

    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    if M:
        x = torch.cat([sd["model.memory_tokens"], x], dim=0)
    T = x.shape[0]
    cos, sin = rope_tables(list(range(T)), dk, cfg)
    kv_store = {}
    for i in range(L):
        p = f"model.layers.{i}."
        u = rmsnorm(x, sd[p + "input_layernorm.weight"], eps)
        proj = u @ sd[p + "mamba.in_proj.weight"].T
        if p + "mamba.in_proj.bias" in sd:
            proj = proj + sd[p + "mamba.in_proj.bias"]
        makes = producer[i] == i
        sizes = [H * dk] + ([Hkv * dk, Hkv * dv] if makes else []) + [di, di]
        parts = list(torch.split(proj, sizes, dim=-1))
        q_all = parts[0]
        xs, z = parts[-2], parts[-1]
        qn = sd.get(p + "mamba.self_attn.q_norm.weight")
        kn = sd.get(p + "mamba.self_attn.k_norm.weight")
        if makes:
            ks, vs = [], []
            for h in range(Hkv):
                k = parts[1][:, h * dk:(h + 1) * dk]
                if kn is not None:
                    k = rmsnorm(k, kn, 1e-6)
                if cfg.get("rope", True):
                    k = rope(k, cos, sin)
                ks.append(k)
                vs.append(parts[2][:, h * dv:(h + 1) * dv])
            kv_store[i] = (ks, vs)
        ks, vs = kv_store[producer[i]]
        is_window = window is not None and i not in global_idx
        attn = torch.zeros(T, H * dv, dtype=torch.float64)
        for h in range(H):
            q = q_all[:, h * dk:(h + 1) * dk]
            if qn is not None:
                q = rmsnorm(q, qn, 1e-6)
            if cfg.get("rope", True):
                q = rope(q, cos, sin)
            kh, vh = ks[h // (H // Hkv)], vs[h // (H // Hkv)]
            for t in range(T):
                keys = [j for j in range(T) if visible(t, j, window if is_window else None, M)]
                scores = torch.stack([q[t] @ kh[j] for j in keys]) / math.sqrt(dk)
                w = torch.softmax(scores, dim=0)
                attn[t, h * dv:(h + 1) * dv] = sum(w[n] * vh[j] for n, j in enumerate(keys))
        # SSM branch
        cw = sd[p + "mamba.conv1d.weight"][:, 0, :]  # [di, K]
        cb = sd.get(p + "mamba.conv1d.bias")
        xc = torch.zeros(T, di, dtype=torch.float64)
        for t in range(T):
            acc = torch.zeros(di, dtype=torch.float64) if cb is None else cb.clone()
            for j in range(K):
                src = t - (K - 1) + j
                if src >= 0:
                    acc = acc + cw[:, j] * xs[src]
            xc[t] = acc * torch.sigmoid(acc)
        dbc = xc @ sd[p + "mamba.x_proj.0.weight"].T
        dt, Bm, Cm = torch.split(dbc, [R, N, N], dim=-1)
        if cfg.get("mamba_inner_layernorms", True):
            dt = rmsnorm(dt, sd[p + "mamba.dt_layernorm.weight"], eps)
            Bm = rmsnorm(Bm, sd[p + "mamba.B_layernorm.weight"], eps)
            Cm = rmsnorm(Cm, sd[p + "mamba.C_layernorm.weight"], eps)
        delta = torch.nn.functional.softplus(dt @ sd[p + "mamba.dt_proj.0.weight"].T + sd[p + "mamba.dt_proj.0.bias"])
        A = -torch.exp(sd[p + "mamba.A_log.0"])
        Dv = sd[p + "mamba.D.0"]
        h = torch.zeros(di, N, dtype=torch.float64)
        ssm = torch.zeros(T, di, dtype=torch.float64)
        for t in range(T):
            h = torch.exp(delta[t][:, None] * A) * h + (delta[t] * xc[t])[:, None] * Bm[t][None, :]
            y = (h * Cm[t][None, :]).sum(-1) + Dv * xc[t]
            ssm[t] = y * (z[t] * torch.sigmoid(z[t]))
        fused = (rmsnorm(attn, sd[p + "mamba.pre_avg_layernorm1.weight"], eps)
                 + rmsnorm(ssm, sd[p + "mamba.pre_avg_layernorm2.weight"], eps)) / 2
        out = fused @ sd[p + "mamba.out_proj.weight"].T
        if p + "mamba.out_proj.bias" in sd:
            out = out + sd[p + "mamba.out_proj.bias"]
        hmid = x + out
        v = rmsnorm(hmid, sd[p + "pre_moe_layernorm.weight"], eps)
        e = p + "moe.experts.0."
        if cfg.get("mlp_hidden_act", "silu") == "silu":
            g = v @ sd[e + "gate_proj.weight"].T
            mlp = ((g * torch.sigmoid(g)) * (v @ sd[e + "up_proj.weight"].T)) @ sd[e + "down_proj.weight"].T
        else:
            mlp = (torch.relu(v @ sd[e + "up_proj.weight"].T) ** 2) @ sd[e + "down_proj.weight"].T
        x = hmid + mlp
    x = rmsnorm(x, sd["model.final_layernorm.weight"], eps)[M:]
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T
