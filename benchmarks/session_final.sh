#!/usr/bin/env bash
# One GPU call: every scan, model and decoding check (side by side, while the benchmark kernels compile), then
# the scan benchmark, the segment sweep, a training step and the end-to-end Hymba numbers. Results in $OUT/r.
source benchmarks/session_setup.sh
mkdir -p $R/cs0 $R/cs1 $R/cs2 $R/cs3 $R/cm $R/cd $R/scan $R/seg $R/train $R/e2e
for k in 0 1 2 3; do
    timeout 220 python benchmarks/check_gpu.py --only scan --shard $k/4 --out $R/cs$k > $R/check_scan$k.log 2>&1 &
done
timeout 220 python benchmarks/check_gpu.py --only model --out $R/cm > $R/check_model.log 2>&1 &
timeout 220 python benchmarks/check_gpu.py --only decode --out $R/cd > $R/check_decode.log 2>&1 &
timeout 220 python benchmarks/warm_kernels.py --jobs variants,scan,model,decode --processes 8 > $R/warm.log 2>&1; stamp warm $?
wait; stamp checks 0
timeout 70 python benchmarks/bench_scan.py --out $R/scan > $R/bench_scan.log 2>&1; stamp scan $?
timeout 80 python benchmarks/bench_scan.py --segments --out $R/seg > $R/scan_segments.log 2>&1; stamp segments $?
timeout 60 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R/train > $R/train.log 2>&1; stamp train $?
timeout 100 python benchmarks/bench_e2e.py --models hymba --out $R/e2e > $R/e2e.log 2>&1; stamp e2e $?
tar czf $OUT/results.tgz -C $OUT r; rm -rf $R
gpu_cache_prune "$(date -d @$S '+%F %T')" _scan_fwd_kernel _scan_bwd_kernel
gpu_cache_save $OUT; stamp saved 0
