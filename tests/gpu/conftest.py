"""The GPU fast path, checked on the CPU: registration and fallback, the attention masks and the static cache
(plain torch), and the Triton kernels themselves under Triton's CPU interpreter when `triton` is installed.

TRITON_INTERPRET must be set before any kernel is defined, so it is set here, at collection time, for the
whole test process (only the hymba.ops.*.triton_* modules define Triton kernels).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_interpreter_for_numpy2() -> None:
    """Triton's interpreter turns scalar arguments into 1-element arrays and calls int() on them, which
    NumPy >= 2.4 refuses (`for t in range(0, L, ...)` with a runtime L). Read the element instead."""
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


_patch_interpreter_for_numpy2()
