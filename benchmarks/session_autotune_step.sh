#!/usr/bin/env bash
# Sixth session, third call: the decode step compiled plainly and with autotuned matmuls
# (compile="max-autotune-no-cudagraphs"), then a batch-6 training step with the tuned FlexAttention options.
source benchmarks/session_setup.sh
mkdir -p $R/dec $R/train6
timeout 390 python benchmarks/compare_decode_steps.py --order compiled,autotuned --out $R/dec \
    > $R/compare_decode_steps.log 2>&1; stamp decode $?
timeout $(( 560 - ($(date +%s) - S) )) python benchmarks/bench_train.py --batch 6 --modes compiled --out $R/train6 \
    > $R/train6.log 2>&1; stamp train6 $?
summary 40
