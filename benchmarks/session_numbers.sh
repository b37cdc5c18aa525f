#!/usr/bin/env bash
# One GPU call for the headline numbers with the code as it is: scan benchmark, segment sweep, training step,
# end-to-end Hymba prefill and decode. Results in $OUT/results.tgz.
source benchmarks/session_setup.sh
mkdir -p $R/scan $R/seg $R/train $R/e2e
timeout 90 python benchmarks/bench_scan.py --quick --out $R/scan > $R/bench_scan.log 2>&1; stamp scan $?
timeout 80 python benchmarks/bench_scan.py --segments --out $R/seg > $R/scan_segments.log 2>&1; stamp segments $?
timeout 80 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R/train > $R/train.log 2>&1; stamp train $?
timeout 120 python benchmarks/bench_e2e.py --models hymba --out $R/e2e > $R/e2e.log 2>&1; stamp e2e $?
tar czf $OUT/results.tgz -C $OUT r
