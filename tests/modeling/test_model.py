"""The model against an independent from-the-formulas implementation, and its structural promises."""

import pytest
import reference
import torch
import torch.nn.functional as F
from helpers import (
    EPS32,
    assert_as_accurate_as_reference,
    assert_gradients_as_accurate,
    assert_model_as_accurate,
    float64_copy,
    randomized,
    relative_error,
    small_config,
)

from hymba import HymbaConfig, HymbaForCausalLM

VARIANTS = {
    "release-like": {},
    "qk-rms-norm": dict(kq_norm="rms"),
    "relu2": dict(mlp_hidden_act="relu2"),
    "untied": dict(tie_word_embeddings=False),
    "proj-biases": dict(mamba_proj_bias=True),
    "no-conv-bias": dict(mamba_conv_bias=False),
    "default-rope": dict(rope_type="default", rope_theta=300.0),
    "dynamic-ntk-stretched": dict(rope_type="dynamic_ntk"),  # 3 meta + 17 tokens > 16: the base follows 20
    "dynamic-ntk-plain": dict(rope_type="dynamic_ntk", orig_max_position_embeddings=20),  # 20 tokens: plain
    "no-rope": dict(rope=False),
    "no-inner-norms": dict(mamba_inner_layernorms=False),
    "groups-of-two": dict(num_hidden_layers=6, global_attn_idx=[0, 5], kv_reuse_group=[[1, 2], [3, 4]]),
    "gqa-4-heads": dict(num_attention_heads=4, num_key_value_heads=2),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_reference_implementation(variant):
    config = small_config(**VARIANTS[variant])
    model = randomized(HymbaForCausalLM(config)).double().eval()
    ids = torch.randint(0, config.vocab_size, (17,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    sd = {k: v for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    expected = reference.forward(sd, config.to_dict(), ids)
    # float64 on both sides: rounding ~1e-13 through 5 layers (float32 runs show ~1e2 eps); far below 1e-9
    torch.testing.assert_close(got.double(), expected, rtol=1e-9, atol=1e-9)


def test_consumer_layers_have_no_kv_weights():
    config = small_config(kq_norm="rms")
    model = HymbaForCausalLM(config)
    H, dk, dv, di = 2, 8, 16, 32
    for i, layer in enumerate(model.model.layers):
        rows = layer.mamba.in_proj.weight.shape[0]
        if config.makes_kv(i):
            assert rows == H * dk + 1 * dk + 1 * dv + 2 * di
            assert hasattr(layer.mamba.self_attn, "k_norm")
        else:
            assert rows == H * dk + 2 * di
            assert not hasattr(layer.mamba.self_attn, "k_norm")
    assert [config.makes_kv(i) for i in range(5)] == [True, True, False, False, True]


def test_every_parameter_gets_a_gradient():
    for name in ("tiny", "tiny-attention-only", "tiny-ssm-only"):
        model = HymbaForCausalLM(HymbaConfig.from_preset(name, kq_norm="rms", mamba_proj_bias=True))
        ids = torch.randint(0, 512, (2, 20))
        model(ids, labels=ids).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing}"


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(ids, labels=labels)
    logp = out.logits.log_softmax(-1)
    terms = [-logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 12) if labels[b, t] != -100]
    # 17 positive terms from the same float32 logits, summed in two orders: within 17 eps32 (relative), 2x slack
    torch.testing.assert_close(out.loss, torch.stack(terms).mean(), rtol=2 * len(terms) * EPS32, atol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_each_row_its_own_logits(side):
    config = small_config()
    model = randomized(HymbaForCausalLM(config)).eval()
    a = torch.randint(0, 50, (1, 9))
    b = torch.randint(0, 50, (1, 15))
    batch = torch.zeros(2, 15, dtype=torch.long)
    mask = torch.zeros(2, 15, dtype=torch.long)
    where = slice(6, 15) if side == "left" else slice(0, 9)
    batch[0, where], mask[0, where] = a, 1
    batch[1], mask[1] = b, 1
    with torch.no_grad():
        out = model(batch, attention_mask=mask).logits
        assert_model_as_accurate(out[0, where], model(a).logits[0], model, lambda m: m(a).logits[0], msg="padded row")
        assert_model_as_accurate(out[1], model(b).logits[0], model, lambda m: m(b).logits[0], msg="full row")


def test_pad_token_values_do_not_matter():
    model = randomized(HymbaForCausalLM(small_config())).eval()
    ids = torch.randint(0, 50, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, :4] = 0
    other = ids.clone()
    other[0, :4] = torch.randint(0, 50, (4,))
    with torch.no_grad():
        # exactly: pads are zeroed before the conv, leave the SSM state as it is (dt = -inf) and are masked
        # with -inf in attention, so their values only ever meet exact zeros; the shapes, hence the sums, match
        assert torch.equal(model(ids, attention_mask=mask).logits[0, 4:],
                           model(other, attention_mask=mask).logits[0, 4:])


def test_attention_only_preset_is_a_llama_block():
    """3 layers, no SSM, no meta tokens, all global: a Llama decoder written out by hand."""
    config = HymbaConfig.from_preset("tiny-attention-only", num_hidden_layers=3, intermediate_size=40)
    model = randomized(HymbaForCausalLM(config)).double().eval()
    ids = torch.randint(0, 512, (2, 11))
    H, Hkv, dk, d = 4, 2, 16, 64

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    pos = torch.arange(11, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, dk, 2, dtype=torch.float64) / dk)
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)

    def rope(x):
        x1, x2 = x[..., : dk // 2], x[..., dk // 2:]
        return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()

    x = model.model.embed_tokens.weight[ids]
    for layer in model.model.layers:
        W = layer.mamba.in_proj.weight
        wq, wk, wv = W[: H * dk], W[H * dk: H * dk + Hkv * dk], W[H * dk + Hkv * dk:]
        h = rms(x, layer.input_layernorm.weight)
        q = rope((h @ wq.T).view(2, 11, H, dk).transpose(1, 2))
        k = rope((h @ wk.T).view(2, 11, Hkv, dk).transpose(1, 2)).repeat_interleave(H // Hkv, 1)
        v = (h @ wv.T).view(2, 11, Hkv, dk).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        s = q @ k.transpose(-1, -2) / dk ** 0.5
        s = s.masked_fill(~torch.ones(11, 11, dtype=torch.bool).tril(), float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 11, d)
        x = x + o @ layer.mamba.out_proj.weight.T  # o_proj
        mlp = layer.moe.experts[0]
        h = rms(x, layer.pre_moe_layernorm.weight)
        x = x + (F.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    logits = rms(x, model.model.final_layernorm.weight) @ model.model.embed_tokens.weight.T
    with torch.no_grad():
        # float64 on both sides: rounding ~1e-14 through 3 layers; 1e-10 is far below any real difference
        torch.testing.assert_close(model(ids).logits.double(), logits, rtol=1e-10, atol=1e-10)


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    a = HymbaForCausalLM(HymbaConfig.from_preset("tiny"))
    b = HymbaForCausalLM(HymbaConfig.from_preset("tiny"))
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing_enable()
    exact = float64_copy(a)
    ids = torch.randint(0, 512, (2, 16))
    losses = [m(ids, labels=ids).loss for m in (a, b, exact)]
    for loss in losses:
        loss.backward()
    assert_as_accurate_as_reference(losses[1], losses[0], losses[2], msg="loss")
    assert_gradients_as_accurate(b, a, exact, lambda m: m(ids, labels=ids).loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    """Rounding errors are first order in the unit roundoff u = eps / 2: the float32 run measures how much the
    network amplifies its own rounding (err32 / u32); the half-precision run rounds the weights as well as the
    activations, two such sources, hence within 2 x that amplification of its own u."""
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        exact = float64_copy(model)(ids).logits
        ref = model(ids).logits
        low = model.to(dtype)(ids).logits
    assert low.dtype == torch.float32
    amplification = relative_error(ref, exact) / (EPS32 / 2)
    assert relative_error(low, exact) <= 2 * amplification * torch.finfo(dtype).eps / 2


def test_bad_inputs_are_named():
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="labels have shape"):
        model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))


def test_release_layout_on_meta_device():
    """Parameter count and every tensor name/shape of the 1.5B release, from the format document."""
    with torch.device("meta"):
        model = HymbaForCausalLM(HymbaConfig.from_preset("hymba-1.5b"), init=False)
    assert model.num_parameters() == 1_522_797_824
    expected = {"model.embed_tokens.weight": (32001, 1600), "model.memory_tokens": (128, 1600),
                "model.final_layernorm.weight": (1600,), "lm_head.weight": (32001, 1600)}
    consumers = {2, 4, 6, 8, 10, 12, 14, 17, 18, 20, 22, 24, 26, 28, 30}
    for i in range(32):
        p = f"model.layers.{i}."
        expected.update({
            p + "input_layernorm.weight": (1600,), p + "pre_moe_layernorm.weight": (1600,),
            p + "mamba.in_proj.weight": (8000 if i in consumers else 8960, 1600),
            p + "mamba.out_proj.weight": (1600, 3200),
            p + "mamba.conv1d.weight": (3200, 1, 4), p + "mamba.conv1d.bias": (3200,),
            p + "mamba.x_proj.0.weight": (132, 3200), p + "mamba.dt_proj.0.weight": (3200, 100),
            p + "mamba.dt_proj.0.bias": (3200,), p + "mamba.A_log.0": (3200, 16), p + "mamba.D.0": (3200,),
            p + "mamba.dt_layernorm.weight": (100,), p + "mamba.B_layernorm.weight": (16,),
            p + "mamba.C_layernorm.weight": (16,), p + "mamba.pre_avg_layernorm1.weight": (3200,),
            p + "mamba.pre_avg_layernorm2.weight": (3200,),
            p + "moe.experts.0.gate_proj.weight": (5504, 1600), p + "moe.experts.0.up_proj.weight": (5504, 1600),
            p + "moe.experts.0.down_proj.weight": (1600, 5504),
        })
    got = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert got == expected
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("tied", [True, False])
def test_padded_vocab_head_gives_the_same_logits_loss_and_gradients(monkeypatch, tied):
    """On CUDA the LM head pads an odd vocabulary for its matmul (aligned GEMMs); forced here on the CPU:
    logits, loss and every gradient equal the plain head's, and the logits keep the vocabulary's width."""
    from hymba.modeling import loss as loss_module

    config = small_config(vocab_size=101, tie_word_embeddings=tied)
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    results = []
    for pad in (False, True):
        monkeypatch.setattr(loss_module, "pads_vocab", lambda hidden: pad)
        torch.manual_seed(0)
        model = randomized(HymbaForCausalLM(config)).double()
        out = model(ids, labels=ids)
        out.loss.backward()
        results.append((out.logits, out.loss, {n: p.grad for n, p in model.named_parameters()}))
    (logits0, loss0, grads0), (logits1, loss1, grads1) = results
    assert logits1.shape == (2, 9, 101)
    # float64, the same products with zero rows added: sums of 16 terms, rounding ~1e-15; far below 1e-12
    torch.testing.assert_close(logits1, logits0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-12, atol=1e-12, msg=name)


def test_pad_token_embedding_gets_no_gradient_from_the_lookup():
    """The official model's embedding has padding_idx = pad_token_id: that row starts at zero and the lookup
    sends it no gradient (with untied embeddings nothing else does either)."""
    config = small_config(tie_word_embeddings=False, pad_token_id=5)
    model = HymbaForCausalLM(config)
    assert torch.equal(model.model.embed_tokens.weight[5], torch.zeros(config.hidden_size))
    ids = torch.tensor([[5, 1, 5, 2, 3]])
    model(ids, labels=ids).loss.backward()
    grad = model.model.embed_tokens.weight.grad
    assert torch.equal(grad[5], torch.zeros(config.hidden_size)) and grad[1].abs().sum() > 0


def test_initialization_keeps_the_ssm_time_scales_and_the_pad_row():
    """From scratch: softplus(dt bias) lies in [dt_min, dt_max] (log-uniform draws, not the Linear's zero
    bias), A_log = log(1..N), D = 1, and with tied embeddings the pad token's row stays zero."""
    torch.manual_seed(0)
    config = small_config(pad_token_id=5)
    model = HymbaForCausalLM(config)
    for layer in model.model.layers:
        dt = F.softplus(layer.mamba.dt_proj[0].bias)
        assert bool(((dt >= 1e-3 * (1 - 1e-6)) & (dt <= 0.1 * (1 + 1e-6))).all()) and dt.std() > 0
        N = config.mamba_d_state
        torch.testing.assert_close(layer.mamba.A_log[0], torch.log(torch.arange(1, N + 1.0)).expand_as(layer.mamba.A_log[0]))
        assert torch.equal(layer.mamba.D[0], torch.ones_like(layer.mamba.D[0]))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight[5], torch.zeros(config.hidden_size))
