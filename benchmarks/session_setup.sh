#!/usr/bin/env bash
# What every session_*.sh GPU call starts with (source it): unbuffered Python output, the compile caches
# (gpu_cache.sh), the results folder R=$OUT/r, `stamp NAME RC` (a stage's exit status and the seconds since
# the start) and `summary` (the tail of every log in R without the compiler's warnings and tracebacks).
export PYTHONUNBUFFERED=1
source benchmarks/gpu_cache.sh
R=$OUT/r
mkdir -p "$R"
S=$(date +%s)
stamp() { echo "$1 rc=$2 $(( $(date +%s) - S )) s"; }
summary() {
    grep -v "^[WE]1[0-9]\{3\} \|^Traceback\|^  \|^\w*Error\|^Exception ignored\|^    " "$R"/*.log | tail -"${1:-60}"
}
