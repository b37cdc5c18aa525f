#!/usr/bin/env bash
# The seventh session's GPU call: the scan backward in time segments side by side (scan_bwd's `segments`).
# The scan check (with a forced 4-segment backward) compiles beside the sweep of segment counts over training
# and fine-tuning shapes; then a training step at batch 4 with the library's pick and with one segment.
source benchmarks/session_setup.sh
mkdir -p $R/cs
timeout 400 python benchmarks/check_gpu.py --only scan --out $R/cs > $R/check_scan.log 2>&1 &
CHECK=$!
timeout 240 python benchmarks/bench_scan.py --bwd-segments --out $R > $R/scan_bwd_segments.log 2>&1; stamp sweep $?
wait $CHECK; stamp check $?
timeout $(( 570 - ($(date +%s) - S) )) python benchmarks/bench_train.py --batch 4 --modes compiled \
    --bwd-segments auto,1 --out $R > $R/train.log 2>&1; stamp train $?
summary 70
tar czf $OUT/results.tgz -C $OUT r
