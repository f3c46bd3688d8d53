"""Processes, devices and how a plain model is prepared for training: activation checkpointing,
torch.compile per block, FSDP2 (``fully_shard``) per block and at the root. The model knows
nothing of this (torchtitan's split between a model and its parallelization).

One process (``ablate train ...``) trains unsharded; under ``torchrun`` (WORLD_SIZE set) every rank
joins a process group (NCCL on GPU, gloo on CPU) and the model is sharded with FSDP2 over a 1-D
device mesh of all ranks, on one node or many.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ablate.train.settings import TrainSettings


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized: bool  # a process group exists
    mesh: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over ranks (identity in one process)."""
        if self.initialized and self.world > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":  # gloo has no AVG
                value /= self.world
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.initialized and self.world > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def broadcast(self, obj):
        """rank 0's value of a picklable object on every rank."""
        if not (self.initialized and self.world > 1):
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_distributed() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed() -> Dist:
    """Join the process group torchrun set up (if any) and pick this rank's device.
    ``ABLATE_DEVICE=cpu`` forces the CPU on a GPU machine."""
    want_cpu = os.environ.get("ABLATE_DEVICE", "").lower() == "cpu"
    use_cuda = torch.cuda.is_available() and not want_cpu
    if not launched_distributed():
        return Dist(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"), False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60), **kwargs)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    return Dist(rank, world, local_rank, device, True, mesh)


def shutdown(d: Dist) -> None:
    if d.initialized and dist.is_initialized():
        dist.destroy_process_group()


def use_fsdp(s: TrainSettings, d: Dist) -> bool:
    if s.fsdp == "on" and not d.initialized:
        from ablate.train.settings import TrainError

        raise TrainError("train setting 'fsdp': on needs a process group; launch with torchrun")
    return d.initialized and s.fsdp != "off"


def use_compile(s: TrainSettings, d: Dist) -> bool:
    """auto: on a GPU without FSDP. Under FSDP compile goes per block, and today's blocks recompile
    per layer (each layer's index and window are constants of its graph), so auto leaves it off."""
    return s.compile == "on" or (s.compile == "auto" and d.device.type == "cuda" and not use_fsdp(s, d))


def parallelize(model: torch.nn.Module, s: TrainSettings, d: Dist) -> torch.nn.Module:
    """Apply, in torchtitan's order: activation checkpointing, compile per block, FSDP2."""
    if s.activation_checkpointing:
        # recompute each block in the backward pass (the model's own hook keeps parameter names)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if use_compile(s, d):
        # Module.compile keeps state-dict keys unchanged (checkpoints load with or without compile).
        # Unsharded: the whole model, one frame (per-layer constants are baked in, no recompiles).
        # FSDP2: per block, as torchtitan does, so FSDP's hooks stay outside the compiled graphs.
        if use_fsdp(s, d):
            for layer in model.model.layers:
                layer.compile()
        else:
            model.compile()
    if use_fsdp(s, d):
        from torch.distributed.fsdp import fully_shard

        # parameters stay fp32 (bf16 comes from autocast), so sharded and unsharded runs compute alike
        for layer in model.model.layers:
            fully_shard(layer, mesh=d.mesh)
        fully_shard(model, mesh=d.mesh)
    return model


def autocast(s: TrainSettings, d: Dist):
    """bf16 autocast on GPU (dtype auto or bf16); fp32 elsewhere."""
    bf16 = s.dtype == "bf16" or (s.dtype == "auto" and d.device.type == "cuda")
    if bf16:
        return torch.autocast(d.device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()
