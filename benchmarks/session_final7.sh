#!/usr/bin/env bash
# The seventh session's checks on the GPU after its changes: the scan (forward and backward in forced time
# segments among the cases) in two shards side by side, and decoding (decode attention with the global
# layers' launch configuration) beside them.
source benchmarks/session_setup.sh
mkdir -p $R/s0 $R/s1 $R/dec
timeout 540 python benchmarks/check_gpu.py --only scan --shard 0/2 --out $R/s0 > $R/check_scan0.log 2>&1 &
timeout 540 python benchmarks/check_gpu.py --only scan --shard 1/2 --out $R/s1 > $R/check_scan1.log 2>&1 &
timeout 540 python benchmarks/check_gpu.py --only decode,attention --out $R/dec > $R/check_decode.log 2>&1; stamp decode $?
wait
stamp scan done
summary 80
tar czf $OUT/results.tgz -C $OUT r
