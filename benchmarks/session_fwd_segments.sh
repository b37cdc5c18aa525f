#!/usr/bin/env bash
# The seventh session's last GPU call: the scan forward in time segments side by side (scan_fwd's `segments`,
# against the rows-scanned-twice way for inference), then the end-to-end run of Hymba alone (decode with the
# global layers' launch configuration, prefill).
source benchmarks/session_setup.sh
timeout 280 python benchmarks/bench_scan.py --fwd-segments --out $R > $R/scan_fwd_segments.log 2>&1; stamp sweep $?
mkdir -p $R/e2e
timeout $(( 575 - ($(date +%s) - S) )) python benchmarks/bench_e2e.py --models hymba --out $R/e2e \
    > $R/e2e.log 2>&1; stamp e2e $?
summary 70
tar czf $OUT/results.tgz -C $OUT r
