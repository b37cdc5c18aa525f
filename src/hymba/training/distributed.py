"""Data parallelism for the trainer: process group set-up from torchrun's environment, DDP or FSDP2
(`fully_shard`) wrapping, collectives that are no-ops in a single process, and the model/optimizer state as
whole state dicts gathered on rank 0 (saved) and broadcast and re-sharded from it (resumed).

    torchrun --nproc_per_node 2 -m hymba.cli train --config cfg.yaml distributed.strategy=fsdp
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from ..modeling.model import HymbaDecoderLayer

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a plain single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- collectives (identity in a single process) ---------------------------------------------------------------
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


# ---- wrapping -------------------------------------------------------------------------------------------------
def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 with every decoder layer its own unit and the rest (embeddings, meta tokens, final
    norm, tied head) in the root unit. Single-process runs get the model back unwrapped."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not info.distributed:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # Layers hand their K/V (views of the input projection) to the next layers of their group; nothing
    # modifies them in place, which is the case this warning is about.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for layer in _decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, HymbaDecoderLayer)]


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place: the model is its own unwrapped self)."""
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) else model


def set_gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-batches but the last (a context manager)."""
    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


# ---- whole state ------------------------------------------------------------------------------------------------
def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state, keyed by parameter name, on the CPU, on rank 0 (other ranks get an empty
    dict); every rank must call this when the model is sharded."""
    return get_optimizer_state_dict(unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                    optim_state: dict[str, Any], info: DistInfo) -> None:
    """Load whole state dicts, read by rank 0 (the other ranks pass empty dicts), into the possibly sharded or
    replicated model and its optimizer: the saving run's world size does not matter. Every rank calls this."""
    inner = unwrap(model)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=info.distributed)
    set_model_state_dict(inner, model_state, options=options)
    set_optimizer_state_dict(inner, optimizer, optim_state, options=options)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU, on rank 0 (other ranks get an empty dict); every rank
    must call this when the model is sharded."""
    inner = unwrap(model)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
