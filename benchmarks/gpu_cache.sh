#!/usr/bin/env bash
# Keep Triton's and Inductor's compile caches across fresh GPU machines (each recompiles every kernel
# otherwise: minutes). Source it to point both caches at .gpu_cache/ and unpack a saved copy found there:
#     source benchmarks/gpu_cache.sh
# and save the caches as parts of at most 15 MB into a folder (for a transfer with a per-file size limit):
#     gpu_cache_save "$OUT"
export TRITON_CACHE_DIR="$PWD/.gpu_cache/triton" TORCHINDUCTOR_CACHE_DIR="$PWD/.gpu_cache/inductor"
if ls .gpu_cache/cache.tgz.part* >/dev/null 2>&1; then
    cat .gpu_cache/cache.tgz.part* | tar xzf - && rm -f .gpu_cache/cache.tgz.part* && echo "gpu_cache: restored"
fi
gpu_cache_save() {
    tar czf - .gpu_cache/triton .gpu_cache/inductor | split -b 15M - "$1/cache.tgz.part"
}
gpu_cache_prune() {  # drop Triton cache entries older than $1 (date) holding kernels named by the other arguments
    local before=$1; shift
    local pattern; pattern=$(printf '^%s\\|' "$@"); pattern=${pattern%\\|}
    find .gpu_cache/triton -mindepth 1 -maxdepth 1 -type d ! -newermt "$before" | while read -r dir; do
        if ls "$dir" | grep -q "$pattern"; then rm -rf "$dir"; fi
    done
    return 0
}
