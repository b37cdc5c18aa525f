#!/usr/bin/env bash
# Sixth session, second call: the SSM projections as they are and padded (bench_ssm_proj), then a compiled
# training step at batch 4 and its profile. (Written for an inductor option against in_proj's concatenation
# kernel, which torch 2.11 turned out not to have: the training stages failed; the split's backward became
# `layers.split_last_dim` instead, measured by a plain bench_train.py call.) Results in $OUT/r.
source benchmarks/session_setup.sh
timeout 60 python benchmarks/bench_ssm_proj.py --out $R > $R/ssm_proj.log 2>&1; stamp ssm_proj $?
timeout 200 python benchmarks/bench_train.py --batch 4 --modes compiled --out $R > $R/train.log 2>&1; stamp train $?
timeout 200 python benchmarks/profile_train.py --batch 4 --top 40 --out $R > $R/profile_train.log 2>&1; stamp profile $?
summary 80
