#!/usr/bin/env bash
# Sixth session, second training call: the SSM projections as they are and padded (bench_ssm_proj), then a
# compiled training step at batch 4 with the compiled layers' concatenation option (LAYER_COMPILE_OPTIONS),
# then its profile (the gradient of in_proj's split: one kernel of 0.63 ms a layer before). $OUT/r.
export PYTHONUNBUFFERED=1
source benchmarks/gpu_cache.sh
R=$OUT/r; mkdir -p $R
S=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - S )) s"; }
timeout 60 python benchmarks/bench_ssm_proj.py --out $R > $R/ssm_proj.log 2>&1; stamp ssm_proj $?
timeout 200 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R > $R/train.log 2>&1; stamp train $?
timeout 200 python benchmarks/profile_train.py --batch 4 --top 40 --out $R > $R/profile_train.log 2>&1; stamp profile $?
grep -v "^W1123\|^Traceback\|^  \|^\w*Error\|^Exception ignored\|^    " $R/*.log | tail -80
