"""Launch configurations of the scan kernels, and the heuristics that adapt them to few rows.

A batch x d_inner problem offers few warps when it has few rows: the heuristics then split each channel's
states over more lanes (`_forward_split`) or cut time into segments walked side by side (`_fwd_segments`,
`_bwd_segments`). They are functions of the problem's shape, the configuration and the device's SM count;
off a CUDA device they keep the plain launch. `scan_fwd` and `scan_bwd` take a `config` and `segments` that
replace their choice (benchmarks, checks).
"""

from __future__ import annotations

import torch
import triton

from ...gpu.device import sm_count

FWD_CONFIG = dict(BD=32, S=1, num_warps=1, PF=8, PB=8)  # BD channels a program, S lanes per channel
BWD_CONFIG = dict(BD=16, S=2, num_warps=1, PF=2, PB=2)  # BD channels a program, S lanes per channel
CHUNK = 16  # steps between saved states: the backward's scratch holds one chunk of states per program

# Few rows: the forward splits each channel's states over two lanes (twice the warps for ~30% more
# instructions a step) when one lane per channel would give the SMs fewer than FWD_SPLIT_BELOW warps each;
# with more warps than that, latency is hidden already and the extra instructions are a net loss.
FWD_SPLIT = dict(BD=16, S=2)
FWD_SPLIT_BELOW = 4

# The backward in time segments, for few rows: one-warp programs of 128 registers a thread, 16 of which an
# H100 SM holds, so segments are added while they all stay resident (more programs than fit are slower),
# each at least BWD_MIN_SEGMENT_CHUNKS chunks long (the adjoint pass and the stitching cost more than
# shorter ones gain).
BWD_RESIDENT_PER_SM = 16
BWD_MIN_SEGMENT_CHUNKS = 32

# The forward in time segments, for few rows: FWD_PROGRAMS_PER_SM programs an SM in all (the segments are
# short and independent: a second wave costs little), each at least FWD_MIN_SEGMENT_CHUNKS chunks long, and at
# least FWD_MIN_SEGMENTS of them: the state pass walks K - 1 segments with only K - 1 times the rows'
# parallelism, so fewer than 4 segments do not pay.
FWD_PROGRAMS_PER_SM = 16
FWD_MIN_SEGMENT_CHUNKS = 32
FWD_MIN_SEGMENTS = 4


def _forward_split(batch: int, d: int, device: torch.device, config: dict = FWD_CONFIG,
                   below: int = FWD_SPLIT_BELOW) -> dict:
    """FWD_SPLIT (to update `config` with) when `config` runs one lane per channel and that would give the
    SMs fewer than `below` warps each; else nothing."""
    if device.type != "cuda" or config["S"] != 1:
        return {}
    one_lane_warps = batch * triton.cdiv(d, config["BD"] * config["num_warps"]) * config["num_warps"]
    return FWD_SPLIT if one_lane_warps < below * sm_count(device) else {}


def _segment_count(per_sm: int, min_chunks: int, batch: int, d: int, n_chunks: int, device: torch.device,
                   cfg: dict) -> int:
    """Time segments for a launch of `cfg`'s programs: as many as keep `per_sm` programs an SM in all, each at
    least `min_chunks` chunks long (1 off the GPU)."""
    if device.type != "cuda":
        return 1
    programs = batch * triton.cdiv(d, cfg["BD"]) * cfg["num_warps"]
    return max(1, min(per_sm * sm_count(device) // programs, n_chunks // min_chunks))


def _segment_layout(n_chunks: int, count: int) -> tuple[int, int]:
    """(chunks a segment, segments) for `count` time segments (clamped to 1..n_chunks), none of them empty."""
    seg_chunks = max(1, triton.cdiv(n_chunks, max(1, min(count, n_chunks))))
    return seg_chunks, max(1, triton.cdiv(n_chunks, seg_chunks))


def _fwd_segments(batch: int, d: int, n_chunks: int, device: torch.device, cfg: dict) -> int:
    """The forward's time segments (`scan_fwd`): one, unless at least FWD_MIN_SEGMENTS fill the SMs."""
    k = _segment_count(FWD_PROGRAMS_PER_SM, FWD_MIN_SEGMENT_CHUNKS, batch, d, n_chunks, device, cfg)
    return k if k >= FWD_MIN_SEGMENTS else 1


def _bwd_segments(batch: int, d: int, n_chunks: int, device: torch.device, cfg: dict) -> int:
    """The backward's time segments (`scan_bwd`): as many as stay resident on the SMs."""
    return _segment_count(BWD_RESIDENT_PER_SM, BWD_MIN_SEGMENT_CHUNKS, batch, d, n_chunks, device, cfg)


def _lanes_for(cfg: dict, N: int) -> dict:
    """`cfg` as it can run with N states: one lane per channel (the same lanes a program) when S does not
    divide N."""
    return cfg if N % cfg["S"] == 0 else dict(cfg, BD=cfg["BD"] * cfg["S"], S=1)
