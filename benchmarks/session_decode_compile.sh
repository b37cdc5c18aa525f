#!/usr/bin/env bash
# One GPU call: the decode step through torch.compile. Checks it against the full forward (small model, in
# the background), then the end-to-end Hymba numbers (decode graph of the eager step and of the compiled
# step side by side), then where the compiled step's time goes. Results in $OUT/results.tgz.
source benchmarks/session_setup.sh
mkdir -p $R/cd $R/e2e $R/prof
timeout 250 python benchmarks/check_gpu.py --only decode --out $R/cd > $R/check_decode.log 2>&1 &
timeout 280 python benchmarks/bench_e2e.py --models hymba --out $R/e2e > $R/e2e.log 2>&1; stamp e2e $?
wait; stamp check 0
timeout 200 python benchmarks/profile_decode.py --compile --out $R/prof > $R/profile_decode_compiled.log 2>&1; stamp profile $?
tar czf $OUT/results.tgz -C $OUT r
