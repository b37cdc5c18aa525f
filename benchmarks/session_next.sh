#!/usr/bin/env bash
# The GPU calls the sixth session left for the next one (its device time ran out), each under 10 minutes:
#   bash benchmarks/session_next.sh 1   # decode attention's launch sweep; where a training step's time goes
#                                       # after the split change (profile_train, batch 4); the model check
#   bash benchmarks/session_next.sh 2   # the decode step with autotuned matmuls (its compile alone took over
#                                       # 6.5 minutes in the sixth session), then the plain compiled step
# Results in $OUT/r (and $OUT/results.tgz).
source benchmarks/session_setup.sh
case "$1" in
1)
    timeout 200 python benchmarks/bench_decode_attention.py --out $R > $R/decode_attention.log 2>&1; stamp attn $?
    timeout 300 python benchmarks/profile_train.py --batch 4 --top 40 --out $R > $R/profile_train.log 2>&1
    stamp profile $?
    mkdir -p $R/cm  # the model check with split_last_dim (not yet run on the GPU)
    timeout 150 python benchmarks/check_gpu.py --only model --out $R/cm > $R/check_model.log 2>&1; stamp check $?
    ;;
2)
    timeout 560 python benchmarks/compare_decode_steps.py --order autotuned,compiled --out $R \
        > $R/compare_decode_steps.log 2>&1; stamp decode $?
    ;;
*) echo "usage: bash benchmarks/session_next.sh 1|2"; exit 2 ;;
esac
summary 60
tar czf $OUT/results.tgz -C $OUT r
