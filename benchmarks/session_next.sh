#!/usr/bin/env bash
# The first GPU call of the next session (written when this session's GPU time ran out; not run yet):
# FlexAttention with the tuned kernel options (bench_flex), a compiled training step with them, the model
# check (forward + backward through them, in the background), and the decode step plain vs compiled after an
# 8k prefill (compare_decode_steps --prefill: the order bench_e2e.py runs them in). Results in $OUT/results.tgz.
export PYTHONUNBUFFERED=1
source benchmarks/gpu_cache.sh
R=$OUT/r; mkdir -p $R/flex $R/train $R/cm $R/dec
S=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - S )) s"; }
timeout 100 python benchmarks/bench_flex.py --out $R/flex > $R/flex.log 2>&1; stamp flex $?
timeout 110 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R/train > $R/train.log 2>&1; stamp train $?
timeout 220 python benchmarks/check_gpu.py --only model --out $R/cm > $R/check_model.log 2>&1 &
timeout 240 python benchmarks/compare_decode_steps.py --prefill --order graph,compiled,eager --out $R/dec \
    > $R/compare_decode_steps.log 2>&1; stamp decode $?
wait; stamp check 0
tar czf $OUT/results.tgz -C $OUT r
