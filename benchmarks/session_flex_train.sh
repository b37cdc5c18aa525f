#!/usr/bin/env bash
# One GPU call: FlexAttention with the tuned kernel options (bench_flex), a compiled training step with them,
# then the end-to-end Hymba numbers (decode with and without the compiled step). Results in $OUT/results.tgz.
export PYTHONUNBUFFERED=1
source benchmarks/gpu_cache.sh
R=$OUT/r; mkdir -p $R/flex $R/train $R/e2e
S=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - S )) s"; }
timeout 100 python benchmarks/bench_flex.py --out $R/flex > $R/flex.log 2>&1; stamp flex $?
timeout 110 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R/train > $R/train.log 2>&1; stamp train $?
timeout 230 python benchmarks/bench_e2e.py --models hymba --out $R/e2e > $R/e2e.log 2>&1; stamp e2e $?
tar czf $OUT/results.tgz -C $OUT r
