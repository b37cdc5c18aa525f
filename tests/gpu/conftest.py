"""The GPU fast path, checked on the CPU: registration and fallback, the attention masks and the static cache
(plain torch), and the Triton kernels themselves under Triton's CPU interpreter when `triton` is installed.

The interpreter must be chosen before any kernel is defined, so it is switched on here, at collection time,
for the whole test process (only the hymba.ops.*.triton_* modules define Triton kernels)."""

from hymba.ops.gpu.interpreter import use_cpu_interpreter

use_cpu_interpreter()
