"""hymba's benchmark suite: correctness checks on the GPU, then timed benchmarks, one JSON each.

    python -m benchmarks list                        # every benchmark: name, suite, what it measures
    python -m benchmarks run --suite cpu|gpu [--only NAME,...] [--out DIR] [--budget-s S] [--smoke]
    python -m benchmarks report                      # rebuild results/summary.md and README.md's tables

benchmarks/README.md says what each benchmark measures, what it is compared with and what limits it.
"""

import os
import sys

# This checkout's src/ first, so `import hymba` is the code beside these benchmarks even where another
# checkout is installed editable in the same environment.
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)
