"""RMSNorm, rotary embeddings (default and NTK) and the MLP against closed forms."""

import math
import re

import torch
from helpers import EPS64

from hymba.config import HymbaConfig
from hymba.modeling.layers import MLP, RMSNorm, RotaryEmbedding, rope_inv_freq
from hymba.ops.rotary import apply_rotary


def test_rmsnorm_by_hand():
    n = RMSNorm(2, eps=0.0)
    n.weight.data = torch.tensor([1.0, 2.0])
    x = torch.tensor([[3.0, 4.0]])
    rms = math.sqrt((9 + 16) / 2)
    # float32 default (rtol 1.3e-6 ~ 11 eps32): a handful of roundings against the float64 value, rounded once
    torch.testing.assert_close(n(x), torch.tensor([[3 / rms, 2 * 4 / rms]]))


def test_rmsnorm_casts_back_before_scaling():
    n = RMSNorm(8)
    n.weight.data = torch.randn(8)
    x = torch.randn(3, 8).to(torch.bfloat16)
    expected = n.weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    # float32 default (rtol 1.3e-6 ~ 11 eps32): the same formula, a mean of 8 squares and a few roundings apart;
    # skipping the cast back to bf16 would move values by up to 2**-9 (relative), far outside it
    torch.testing.assert_close(n(x), expected)


def test_rmsnorm_with_its_own_dtype_scales_in_the_kernel():
    """Weight and input of one dtype: the release's order to the bit in fp32, within one step of it in bf16,
    and no farther from the exact value (one rounding instead of two)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 32, generator=g), torch.randn(32, generator=g)
    def release(x, w):
        return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    n = RMSNorm(32)
    n.weight.data = w.clone()
    assert torch.equal(n(x), release(x, w))
    xb, n.weight.data = x.bfloat16(), w.bfloat16()
    got, ref = n(xb), release(xb, w.bfloat16())
    torch.testing.assert_close(got, ref, rtol=2**-7, atol=0)  # one step of the 8-bit significand
    exact = release(xb.double(), w.bfloat16().double())
    assert (got.double() - exact).abs().sum() <= (ref.double() - exact).abs().sum()


def test_ntk_base_of_the_release():
    c = HymbaConfig.from_preset("hymba-1.5b")
    base = 10000 * (2 * 8192 / 2048 - 1) ** (64 / 62)
    assert abs(base - 74534.8) < 0.1  # the value to its printed digits
    # float64 powers of the same base and exact exponents, torch's and libm's each within an ulp (eps64 relative)
    torch.testing.assert_close(rope_inv_freq(c), torch.tensor([base ** (-2 * i / 64) for i in range(32)],
                                                              dtype=torch.float64), rtol=4 * EPS64, atol=0)


def test_default_rope_frequencies():
    c = HymbaConfig.from_preset("tiny", rope_type="default", rope_theta=500.0)
    torch.testing.assert_close(rope_inv_freq(c), torch.tensor([500.0 ** (-2 * i / 16) for i in range(8)],
                                                              dtype=torch.float64), rtol=4 * EPS64, atol=0)  # as above


def test_rotary_is_a_rotation_of_pairs_i_and_i_plus_half():
    c = HymbaConfig.from_preset("tiny", rope_type="default")
    rot = RotaryEmbedding(c)
    pos = torch.tensor([[0, 1, 7, 300]])
    cos, sin = rot(pos, torch.float64)
    x = torch.randn(1, 2, 4, 16, dtype=torch.float64)
    got = apply_rotary(x, cos, sin)
    # closed form: the complex number (x_i + i x_{i+8}) times exp(i * pos * f_i)
    freqs = rope_inv_freq(c)
    z = torch.complex(x[..., :8], x[..., 8:])
    angle = pos[0, :, None].double() * freqs
    rz = z * torch.polar(torch.ones_like(angle), angle)
    # a float64 model's angles are float64 (the same products on both sides): cos and sin within an ulp, then two
    # products and a sum, a few eps64 x |x| per element
    torch.testing.assert_close(got, torch.cat([rz.real, rz.imag], dim=-1), rtol=0,
                               atol=16 * EPS64 * x.abs().max().item())
    # relative property: <R(p) q, R(p') k> depends only on p - p'
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def rotated(v, p):
        cs, sn = rot(torch.tensor([[p]]), torch.float64)
        return apply_rotary(v[None, None, None], cs, sn).flatten()
    # float64 angles up to 106 rad, each within 106 eps64 / 2 of exact: their differences, hence the products,
    # agree to ~2 x 106 eps64 x |q||k| (plus the 16-term dot products' rounding)
    torch.testing.assert_close(rotated(q, 10) @ rotated(k, 4), rotated(q, 106) @ rotated(k, 100), rtol=0,
                               atol=512 * EPS64 * (q.norm() * k.norm()).item())


def test_mlp_variants():
    c = HymbaConfig.from_preset("tiny")
    m = MLP(c).double()
    x = torch.randn(3, 64, dtype=torch.float64)
    g, u = x @ m.gate_proj.weight.T, x @ m.up_proj.weight.T
    # float64: sums of 64 and 128 products, rounding ~1e-15 of their magnitude; 1e-12 is far below any real error
    torch.testing.assert_close(m(x), (g * torch.sigmoid(g) * u) @ m.down_proj.weight.T, rtol=1e-12, atol=1e-12)
    r = MLP(c.replace(mlp_hidden_act="relu2")).double()
    assert not hasattr(r, "gate_proj")
    torch.testing.assert_close(r(x), torch.relu(x @ r.up_proj.weight.T) ** 2 @ r.down_proj.weight.T, rtol=1e-12,
                               atol=1e-12)  # as above


def test_split_last_dim_gradients_match_a_plain_split_even_with_unused_parts():
    from hymba.modeling.layers import split_last_dim

    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(2, 3, n, dtype=torch.float64) for n in (4, 1, 5)]
    for used in ([0, 1, 2], [0, 2], [1]):  # an unused part has no gradient: zeros in its slice
        grads = []
        for split in (lambda t: t.split([4, 1, 5], dim=-1), lambda t: split_last_dim(t, [4, 1, 5])):
            parts = split(x)
            sum((parts[i] * weights[i]).sum() for i in used).backward()
            grads.append(x.grad)
            x.grad = None
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)  # the same values, placed: exact
        assert (grads[1][..., 4:5] == 0).all() == (1 not in used)
    with torch.no_grad():  # inference: the plain split (views, no autograd node)
        assert split_last_dim(x, [4, 6])[0]._base is x


def test_split_last_dim_backward_stays_one_opaque_concatenation_under_torch_compile():
    """What the helper is for: the traced backward concatenates the parts' gradients with our op, not an
    aten.cat that inductor would fuse their producers into; and the split traces without a graph break."""
    import torch._dynamo
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from hymba.modeling.layers import split_last_dim

    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.code))
        return make_boxed_func(gm.forward)

    def f(x, cos, sin):
        q, k, z = split_last_dim(x, [8, 8, 6])
        return (apply_rotary(q[:, None], cos, sin) * k[:, None]).sum() + z.sigmoid().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
    x = torch.randn(2, 5, 22, requires_grad=True)
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    compiled(x, cos, sin).backward()
    forward, backward = graphs
    assert "hymba.concat_last_dim" in backward
    cats = re.findall(r"aten\.cat\.default\(\[([^\]]*)\]", backward)  # only the rotary's own (-x2, x1)
    assert cats and all(len(c.split(",")) == 2 for c in cats), cats
    want = torch.autograd.grad(f(x, cos, sin), x)[0]
    # float32 default (rtol 1.3e-6 ~ 11 eps32): each gradient element is a product or two, the traced graph
    # running the same aten ops eagerly (no inductor)
    torch.testing.assert_close(x.grad, want)


def test_dynamic_ntk_tables_follow_each_rows_length():
    """"dynamic_ntk": a row whose largest position + 1 (n) is within orig_max_position_embeddings rotates with
    rope_theta; a longer one with the NTK base for n, base = theta * (2 n / orig - 1) ** (d / (d - 2)), per row
    (padding, -1, counts for nothing). Written out with Python floats, compared in float64."""
    c = HymbaConfig.from_preset("tiny", rope_type="dynamic_ntk", rope_theta=500.0)  # head_dim 16, orig 128
    rot = RotaryEmbedding(c)
    pos = torch.full((3, 6), -1)
    pos[0] = torch.arange(6)  # n = 6: plain
    pos[1, 2:] = torch.tensor([124, 125, 126, 127])  # n = 128 = orig: still plain
    pos[2, 1:] = torch.tensor([195, 196, 197, 198, 199])  # n = 200: stretched
    cos, sin = rot(pos, torch.float64)
    for row, n in enumerate((6, 128, 200)):
        base = 500.0 * ((2 * n / 128 - 1) ** (16 / 14) if n > 128 else 1.0)
        for t in range(6):
            p = max(int(pos[row, t]), 0)
            angles = [p * base ** (-2 * i / 16) for i in range(8)] * 2
            want_cos = torch.tensor([math.cos(a) for a in angles], dtype=torch.float64)
            want_sin = torch.tensor([math.sin(a) for a in angles], dtype=torch.float64)
            # angles of up to ~200 radians in float64: ~1e-13 of rounding
            torch.testing.assert_close(cos[row, t], want_cos, rtol=0, atol=1e-12)
            torch.testing.assert_close(sin[row, t], want_sin, rtol=0, atol=1e-12)
    # the stretched base is exactly NTK's with max_position_embeddings = n
    ntk = HymbaConfig.from_preset("tiny", rope_type="ntk", rope_theta=500.0, max_position_embeddings=200)
    assert torch.equal(rope_inv_freq(c, torch.tensor([200]))[0], rope_inv_freq(ntk))
