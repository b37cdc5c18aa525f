#!/usr/bin/env bash
# The eighth session's GPU calls (the first two ran profile_prefill.py and bench_flex_prefill.py alone):
#   bash benchmarks/session_eighth.sh 1   # checks of the padded FlexAttention and the stitched scan segments,
#                                         # the prefill profile after both, Hymba end to end
#   bash benchmarks/session_eighth.sh 2   # end to end with both Llamas in one run
#   bash benchmarks/session_eighth.sh 3   # the FlexAttention checks (call 1 ran out of time for them); a training
#                                         # step with the loss from the hidden states, batch 8 (6 on out-of-memory)
# Results in $OUT/r (and $OUT/results.tgz).
source benchmarks/session_setup.sh
case "$1" in
1)
    mkdir -p $R/c
    timeout 200 python benchmarks/check_gpu.py --only segments,attention,strided --out $R/c > $R/check.log 2>&1
    stamp check $?
    timeout 150 python benchmarks/profile_prefill.py --modes eager --out $R > $R/profile_prefill.log 2>&1
    stamp prefill $?
    mkdir -p $R/e2e
    timeout $(( 570 - ($(date +%s) - S) )) python benchmarks/bench_e2e.py --models hymba --out $R/e2e \
        > $R/e2e_hymba.log 2>&1; stamp e2e $?
    ;;
2)
    timeout 570 python benchmarks/bench_e2e.py --out $R > $R/e2e.log 2>&1; stamp e2e $?
    ;;
3)
    mkdir -p $R/c $R/train
    timeout 300 python benchmarks/check_gpu.py --only attention,strided --out $R/c > $R/check_attention.log 2>&1
    stamp check $?
    timeout $(( 560 - ($(date +%s) - S) )) python benchmarks/bench_train.py --batch 8 --modes compiled \
        --out $R/train > $R/train.log 2>&1; stamp train $?
    ;;
*) echo "usage: bash benchmarks/session_eighth.sh 1|2|3"; exit 2 ;;
esac
summary 120
tar czf $OUT/results.tgz -C $OUT r
