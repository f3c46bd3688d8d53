"""AdamW and the learning-rate schedules (warmup-stable-decay, cosine, constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ablate.train.settings import TrainSettings


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices of linear layers and embeddings only: norms, biases, SSM
    dynamics (A_log, D, dt bias, conv) and meta tokens are not pulled towards zero (as in Mamba,
    which exempts A_log and D)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue  # tied weights appear twice
            seen.add(id(p))
            (decay if isinstance(module, (nn.Linear, nn.Embedding)) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW (one kernel for all parameters) on GPU; the default foreach path on CPU
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, fused=fused or None)


def lr_factor(step: int, s: TrainSettings) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based): linear warmup, then
    wsd: constant, then a 1-sqrt decay to min_lr_ratio over the last decay_fraction of the steps
    (Hägele et al. 2024); cosine: cosine decay to min_lr_ratio; constant: flat."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    floor = s.min_lr_ratio
    if s.schedule == "constant":
        return 1.0
    if s.schedule == "cosine":
        span = max(1, s.steps - s.warmup_steps)
        progress = min(1.0, (step - s.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = int(round(s.decay_fraction * s.steps))
    decay_start = s.steps - decay_steps
    if decay_steps == 0 or step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return floor + (1 - floor) * (1 - math.sqrt(progress))


def build_scheduler(optimizer: torch.optim.Optimizer, s: TrainSettings) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s))
