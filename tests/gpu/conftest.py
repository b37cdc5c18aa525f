"""The GPU fast path, checked on the CPU: registration and fallback, the attention masks and the static cache
(plain torch), and the Triton kernels themselves under Triton's CPU interpreter when `triton` is installed.

The interpreter must be chosen before any kernel is defined, so it is switched on here, at collection time,
for the whole test process (only the hymba.ops.scan.triton package, hymba.ops.conv.triton_conv and
hymba.ops.attention.decode_triton define Triton kernels; the package imports them only lazily)."""

from hymba.ops.gpu.interpreter import use_cpu_interpreter

use_cpu_interpreter()
