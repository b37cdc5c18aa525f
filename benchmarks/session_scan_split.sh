#!/usr/bin/env bash
# One GPU call: correctness of the scan kernels (4 processes) while the benchmark kernels compile, then the
# scan benchmarks at the and the training shape, and training steps with the backward's state split
# S=2 (default) and S=1. Results in $OUT/r (tarred), compile caches saved beside them.
source benchmarks/session_setup.sh
mkdir -p $R/cs0 $R/cs1 $R/cs2 $R/cs3 $R/b4096 $R/b2176 $R/t2 $R/t1 $R/prof
for k in 0 1 2 3; do
    timeout 200 python benchmarks/check_gpu.py --only scan --shard $k/4 --out $R/cs$k > $R/check_scan$k.log 2>&1 &
done
timeout 200 python benchmarks/warm_kernels.py --jobs variants,scan --processes 8 > $R/warm.log 2>&1; stamp warm $?
wait; stamp checks 0
timeout 100 python benchmarks/bench_scan.py --out $R/b4096 > $R/bench_scan.log 2>&1; stamp bench4096 $?
timeout 70 python benchmarks/bench_scan.py --shape 4,2176,3200,16 --out $R/b2176 > $R/bench_scan_2176.log 2>&1; stamp bench2176 $?
timeout 80 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R/t2 > $R/train.log 2>&1; stamp train $?
timeout 70 python benchmarks/bench_train.py --batch 4 --modes compiled --scan-backward '{"BD": 32, "S": 1}' --out $R/t1 > $R/train_s1.log 2>&1; stamp train_s1 $?
left=$(( 470 - ($(date +%s) - S) ))
[ $left -gt 30 ] && { timeout $left python benchmarks/profile_train.py --out $R/prof > $R/profile_train.log 2>&1; stamp prof $?; }
tar czf $OUT/results.tgz -C $OUT r; rm -rf $R
gpu_cache_prune "$(date -d @$S '+%F %T')" _scan_bwd_kernel
gpu_cache_save $OUT; stamp saved 0
