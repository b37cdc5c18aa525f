#!/usr/bin/env bash
# The eighth session's second GPU call: FlexAttention at prefill shapes, static vs dynamic lengths.
source benchmarks/session_setup.sh
timeout 560 python benchmarks/bench_flex_prefill.py --out $R > $R/flex_prefill.log 2>&1; stamp flex $?
summary 80
tar czf $OUT/results.tgz -C $OUT r
