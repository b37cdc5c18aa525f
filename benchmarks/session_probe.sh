#!/usr/bin/env bash
export PYTHONUNBUFFERED=1
source benchmarks/gpu_cache.sh
R=$OUT/r; mkdir -p $R/flex
S=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - S )) s"; }
TORCH_LOGS=recompiles timeout 260 python benchmarks/probe_decode_compile.py > $R/probe.log 2>&1; stamp probe $?
timeout 300 python benchmarks/bench_flex.py --candidates none --out $R/flex > $R/flex.log 2>&1; stamp flex $?
tar czf $OUT/results.tgz -C $OUT r
