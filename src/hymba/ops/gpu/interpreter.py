"""Run the Triton kernels on the CPU with Triton's interpreter (tests, dry runs of the GPU scripts)."""

from __future__ import annotations

import os


def use_cpu_interpreter() -> None:
    """Must run before the kernel modules (the hymba.ops.scan.triton package, hymba.ops.conv.triton_conv,
    hymba.ops.attention.decode_triton) are imported: Triton decides at definition time whether a kernel is
    compiled or interpreted.

    Also works around the interpreter turning scalar arguments into 1-element arrays and calling int() on
    them, which NumPy >= 2.4 refuses (a `range(0, L, ...)` loop over a runtime L)."""
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.runtime.interpreter as interp
    except ImportError:
        return
    original = interp._patch_lang_tensor
    if getattr(original, "_hymba_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._hymba_patched = True
    interp._patch_lang_tensor = patched
