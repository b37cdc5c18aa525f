"""The fast kernel bundle for CUDA ("triton"): Triton selective scan and causal conv (fla-core's conv when
installed), FlexAttention for prefill and training, a Triton decode-attention kernel for decode steps.

Importing this module needs neither CUDA nor Triton: it only registers a factory, which raises
ImportError / RuntimeError where the bundle cannot run, so that `get_kernels("auto")` falls back to the
reference kernels.
"""

from __future__ import annotations

from ..registry import Kernels, register_kernels


def build_triton_kernels(conv: str = "auto", require_cuda: bool = True) -> Kernels:
    """The bundle. conv: "fla" (fla-core's Triton causal_conv1d), "triton" (ours), or "auto" (fla-core when
    importable). require_cuda=False builds it anyway (for Triton's CPU interpreter in tests), with the Triton
    decode attention on for CPU tensors too."""
    import functools

    import torch

    if require_cuda and not torch.cuda.is_available():
        raise RuntimeError("the triton kernels need a CUDA device (torch.cuda.is_available() is False)")
    import triton  # noqa: F401  (ImportError when Triton is missing)

    from ..attention.flex import build_flex_mask, flex_attention
    from ..conv.triton_conv import causal_conv1d_triton, conv_step_triton, fla_causal_conv1d
    from ..norm.triton_norm import norm_average_triton, segment_norms_triton
    from ..rotary.triton_rotary import rotary_triton
    from ..scan.triton import selective_scan_triton, ssm_step_triton

    if conv not in ("auto", "fla", "triton"):
        raise ValueError(f"conv must be 'auto', 'fla' or 'triton', got {conv!r}")
    conv_fn, conv_name = causal_conv1d_triton, "triton"
    if conv in ("auto", "fla"):
        try:
            conv_fn, conv_name = fla_causal_conv1d(), "fla"
        except ImportError:
            if conv == "fla":
                raise
    return Kernels(
        name="triton" if conv_name == "fla" or conv == "auto" else "triton-conv",
        causal_conv1d=conv_fn,
        conv_step=conv_step_triton,
        selective_scan=selective_scan_triton,
        ssm_step=ssm_step_triton,
        build_attention_mask=build_flex_mask if require_cuda else functools.partial(build_flex_mask, decode_kernel=True),
        attention=flex_attention,
        rotary=rotary_triton,
        norm_average=norm_average_triton,
        segment_norms=segment_norms_triton,
        traceable=conv_name != "fla",  # fla-core's conv runs outside torch.compile (a graph break)
    )


register_kernels("triton", build_triton_kernels, prefer_on_cuda=True)
register_kernels("triton-conv", lambda: build_triton_kernels(conv="triton"))

__all__ = ["build_triton_kernels"]
