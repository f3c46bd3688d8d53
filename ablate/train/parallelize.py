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


def use_compile(s: TrainSettings, d: Dist, config=None) -> bool:
    """auto: on a GPU without FSDP, unless a kernel of this model falls back to a Python-loop
    reference scan there (compiling would unroll one step per token). Under FSDP compile goes per
    block, and today's blocks recompile per layer (each layer's index and window are constants of
    its graph), so auto leaves it off."""
    if s.compile != "auto":
        return s.compile == "on"
    if d.device.type != "cuda" or use_fsdp(s, d):
        return False
    return config is None or not uses_reference_scan(kernel_choices(config, d.device))


def kernel_choices(config, device, seq_len: int = 256) -> dict[str, list[str]]:
    """Which implementation each kernel op picks in one forward of a 2-layer copy of this model on
    ``device`` (bf16 autocast on GPU), e.g. {"selective_scan": ["triton"], "attention": ["flex"]}.
    Recorded by wrapping the ops' run-time choice; the choice depends on device, dtype and head
    sizes, not on depth."""
    from ablate.kernels import backend
    from ablate.model.lm import AblateForCausalLM

    device = torch.device(device)
    try:
        probe_config = config.__class__(**dict(config.to_dict(), num_hidden_layers=2))
    except Exception:  # e.g. layer lists that name deeper layers: probe the model as it is
        probe_config = config
    seen: dict[str, set] = {}
    original = backend.Op.choose

    def spy(self, b, *args, **kwargs):
        fn = original(self, b, *args, **kwargs)
        name = "reference" if fn is self.reference else next((n for n, (f, _) in self.fast_paths.items() if f is fn), getattr(fn, "__name__", "?"))
        seen.setdefault(self.name, set()).add(name)
        return fn

    backend.Op.choose = spy
    model = None
    try:
        with torch.device(device):
            model = AblateForCausalLM(probe_config)
        x = torch.randint(0, probe_config.vocab_size, (2, seq_len), device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(input_ids=x, seq_idx=torch.zeros_like(x) if probe_config.document_masking else None)
    finally:
        backend.Op.choose = original
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {k: sorted(v) for k, v in seen.items()}


def uses_reference_scan(choices: dict) -> bool:
    return any("reference" in choices.get(op, []) for op in ("selective_scan", "ssd_scan"))


def parallelize(model: torch.nn.Module, s: TrainSettings, d: Dist, compile_: bool = False) -> torch.nn.Module:
    """Apply, in torchtitan's order: activation checkpointing, compile, FSDP2."""
    if s.activation_checkpointing:
        # recompute each block in the backward pass (the model's own hook keeps parameter names)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile_:
        # Module.compile keeps state-dict keys unchanged (checkpoints load with or without compile).
        # Unsharded: the whole model, one frame (per-layer constants are baked in, no recompiles).
        # FSDP2: per block, as torchtitan does, so FSDP's hooks stay outside the compiled graphs.
        allow_per_layer_recompiles(len(model.model.layers))
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


def allow_per_layer_recompiles(num_layers: int) -> None:
    """Let torch.compile make one graph per layer. A block's forward guards on its layer's constants
    (index, KV source), so wherever blocks compile as separate frames (per-block compile under FSDP2,
    or a whole-model compile split by a graph break, as seen on the H100 in
    reports/kernels/h100/train_step-recompile-limit.log) each layer is a recompile; dynamo's default
    limit of 8 would leave the rest eager."""
    import torch._dynamo

    limit = 2 * num_layers + 8
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
