#!/usr/bin/env bash
# The eighth session's first GPU call: where an 8k prefill's time goes, eager and with compiled layers.
source benchmarks/session_setup.sh
timeout 540 python benchmarks/profile_prefill.py --out $R > $R/profile_prefill.log 2>&1; stamp prefill $?
summary 150
tar czf $OUT/results.tgz -C $OUT r
