"""Small model factories and paths shared by the tests, and the float32 tolerance rule."""

import math
import os

import torch

from hymba import HymbaConfig, HymbaForCausalLM

# The project's shared folder (../shared beside the checkout, or $HYMBA_SHARED).
SHARED = os.environ.get("HYMBA_SHARED") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def small_config(**overrides) -> HymbaConfig:
    """Every feature of the release at toy size: 5 layers, globals at 0 and 4, a K/V group of three."""
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=5, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=24, mamba_d_state=3, mamba_d_conv=3, mamba_dt_rank=4, num_memory_tokens=3,
                sliding_window=4, global_attn_idx=[0, 4], kv_reuse_group=[[1, 2, 3]],
                max_position_embeddings=64, orig_max_position_embeddings=16)
    base.update(overrides)
    return HymbaConfig(**base)


def randomized(model: HymbaForCausalLM, seed: int = 0, scale: float = 0.3) -> HymbaForCausalLM:
    """Move every parameter away from its initial value (norm weights off 1, biases off 0, ...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale
            if name.endswith("A_log.0"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif "norm" in name:
                p.copy_(1 + noise)
            else:
                p.add_(noise)
    return model


def random_weights(model: HymbaForCausalLM, seed: int = 0, scale: float = 0.15) -> HymbaForCausalLM:
    """Every parameter moved off its initial value, so that no two tokens tie for the argmax by accident."""
    return randomized(model, seed, scale).eval()


def two_group_config(**overrides) -> HymbaConfig:
    """Global layers 0 and 6, K/V groups of 2 ([1, 2]) and 3 ([3, 4, 5]), 4 meta tokens, window 6."""
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=4, num_memory_tokens=4,
                sliding_window=6, global_attn_idx=[0, 6], kv_reuse_group=[[1, 2], [3, 4, 5]],
                max_position_embeddings=256, orig_max_position_embeddings=64)
    base.update(overrides)
    return HymbaConfig(**base)


# ---- tolerances ------------------------------------------------------------------------------------------------------
EPS32 = torch.finfo(torch.float32).eps  # 2**-23: float32 rounds each operation to within EPS32 / 2, relative
EPS64 = torch.finfo(torch.float64).eps  # 2**-52


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Normwise relative distance ||got - want|| / ||want|| (2-norms over the whole tensor, in float64)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    got, want = got.detach().double(), want.detach().double()
    norm = want.norm().item()
    if norm == 0:
        return 0.0 if torch.equal(got, want) else math.inf
    return (got - want).norm().item() / norm


def assert_as_accurate_as_reference(fast: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor, msg: str = "",
                                    k: float = 4.0, floor: float = 4 * EPS32) -> float:
    """The tolerance of a float32 computation against another float32 evaluation of the same function.

    `fast` (an alternative float32 path: other kernels, a cache, torch.compile, a padded batch) and `ref32` (the
    reference path in float32) are both measured against `ref64`, the reference path in float64 on the same
    (float32-representable) weights and inputs, which is exact to ~1e-16:

        ||fast - ref64|| / ||ref64||  <=  k * max(||ref32 - ref64|| / ||ref64||, floor)

    Two float32 evaluations of one function in different orders differ from the exact value by rounding errors
    of the same size, whatever the CPU's kernels, so a small k (4) covers them, while a real defect (a wrong
    mask, a dropped term, a stale cache entry) is orders of magnitude above float32 rounding.
    The floor (4 eps32) keeps a reference that happens to be exact from demanding exactness; for a model's
    outputs `assert_model_as_accurate` raises it to their float32 sensitivity. Norms are over the whole tensor:
    compare tensors (or scalars stacked into one), not single elements, whose rounding errors scatter widely.
    Returns the margin err / bound (below 1 when it passes)."""
    assert fast.shape == ref32.shape == ref64.shape, (fast.shape, ref32.shape, ref64.shape)
    err, ref_err = relative_error(fast, ref64), relative_error(ref32, ref64)
    bound = k * max(ref_err, floor)
    assert err <= bound, (f"{msg}: float32 path {err:.2e} from float64, more than {k:g} x the float32 reference's "
                          f"{ref_err:.2e} (floor {floor:.1e})")
    return err / bound


def perturbed_copies(model: HymbaForCausalLM, draws: int = 2, copy=None):
    """float64 copies of `model` (`float64_copy`, or `copy(model)` for a model it cannot rebuild, one with
    adapters) with every weight multiplied by 1 + eps32 * N(0, 1), one per draw (fixed seeds): the size of
    change that float32 rounding amounts to (a backward error of ~eps32)."""
    for draw in range(draws):
        twin, g = (copy or float64_copy)(model), torch.Generator().manual_seed(draw)
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(1 + EPS32 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        yield twin


def assert_model_as_accurate(fast: torch.Tensor, ref32: torch.Tensor, model: HymbaForCausalLM, output_of,
                             msg: str = "", k: float = 4.0, draws: int = 2, copy=None) -> float:
    """The rule above for an output of a model: `ref32` is `output_of(model)` on the float32 reference path, the
    float64 reference is `output_of(float64_copy(model))` (or of `copy(model)`, see `perturbed_copies`), and the
    floor is the output's own float32 sensitivity, how far it moves in float64 under `perturbed_copies` (the
    largest of `draws`). A network has ill-conditioned spots (an RMS norm over 3 values that happen to be small)
    where one float32 evaluation's error can come out ten times smaller than another's by luck; the
    sensitivity does not depend on that luck."""
    with torch.no_grad():
        exact = output_of((copy or float64_copy)(model))
        floor = max([4 * EPS32] + [relative_error(output_of(twin), exact)
                                   for twin in perturbed_copies(model, draws, copy)])
    return assert_as_accurate_as_reference(fast, ref32, exact, msg=msg, k=k, floor=floor)


def assert_gradients_as_accurate(fast: HymbaForCausalLM, ref32: HymbaForCausalLM, ref64: HymbaForCausalLM,
                                 loss_of, k: float = 4.0, draws: int = 2) -> float:
    """The rule above for every parameter gradient of three models after one backward each of `loss_of(model)`:
    the float32 path under test, the float32 reference and the float64 reference (`float64_copy`). The floor is
    the gradients' float32 sensitivity as in `assert_model_as_accurate`, per parameter or over all of them
    together, whichever is larger (a tensor of 3 values is too few to measure it alone). Returns the worst
    margin."""
    names = [name for name, _ in ref32.named_parameters()]
    exact = [p.grad for p in ref64.parameters()]
    level = [4 * EPS32] * len(names)
    for twin in perturbed_copies(ref64, draws):
        loss_of(twin).backward()
        moved = [p.grad for p in twin.parameters()]
        pooled = relative_error(torch.cat([m.flatten() for m in moved]), torch.cat([e.flatten() for e in exact]))
        level = [max(lv, pooled, relative_error(m, e)) for lv, m, e in zip(level, moved, exact)]
    return max(assert_as_accurate_as_reference(q.grad, p.grad, e, msg=name, k=k, floor=lv)
               for name, q, p, e, lv in zip(names, fast.parameters(), ref32.parameters(), exact, level))


def assert_sum_as_accurate(fast, ref32_terms, ref64_terms, msg: str = "", k: float = 4.0) -> float:
    """The rule above for float32 numbers that each sum n terms (log-probabilities of tokens, say) whose float32
    and float64 reference values are at hand: `fast` one number or a list, the terms one tensor or a list of
    them. A single number's rounding error is too erratic to compare with another single number's, so the bound
    takes the reference's error without the cancellations a sum enjoys, plus the worst case of summing in
    float32 ((n - 1) roundings of partial sums and the result's, each at most eps32 / 2 of them), pooled over
    the list:

        sum_i |fast_i - sum(ref64_i)|  <=  sum_i (k * sum |ref32_i - ref64_i|  +  n_i * eps32 / 2 * sum |ref64_i|)

    A wrong, missing or extra term moves a sum by a whole term, orders of magnitude above this bound. For a
    mean, pass the terms divided by their count. Returns the margin err / bound."""
    if not isinstance(fast, (list, tuple)):
        fast, ref32_terms, ref64_terms = [fast], [ref32_terms], [ref64_terms]
    err = bound = 0.0
    for value, t32, t64 in zip(fast, ref32_terms, ref64_terms, strict=True):
        assert t32.shape == t64.shape, (t32.shape, t64.shape)
        t32, t64 = t32.detach().double(), t64.detach().double()
        err += abs(float(value) - t64.sum().item())
        bound += k * (t32 - t64).abs().sum().item() + t64.numel() * EPS32 / 2 * t64.abs().sum().item()
    assert err <= bound, f"{msg}: float32 sums {err:.2e} from float64 in all, above the bound {bound:.2e}"
    return err / bound


def float64_copy(model: HymbaForCausalLM) -> HymbaForCausalLM:
    """The model's weights in float64 on the reference kernels (the oracle of the rule above); the global random
    stream is left as it was, so that building it does not change a test's later draws."""
    with torch.random.fork_rng(devices=[]):
        twin = HymbaForCausalLM(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.double().set_kernels("reference").train(model.training)


def small_lm_config(**overrides) -> HymbaConfig:
    """Every Hymba feature (global + window layers, a K/V group, meta tokens) at toy width, Hymba's vocabulary."""
    base = dict(vocab_size=32001, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=48, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=4, num_memory_tokens=4,
                sliding_window=8, global_attn_idx=[0, 3], kv_reuse_group=[[1, 2]],
                max_position_embeddings=512, orig_max_position_embeddings=128,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(overrides)
    return HymbaConfig(**base)
