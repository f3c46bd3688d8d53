"""What the two scripts of this folder share: the decode projections they time, their cold weights
and the per-GEMM graph-replay timing."""

from __future__ import annotations

import math
import sys

import torch

sys.path.insert(0, "reports/bench-h100/overlap-and-gemm-removed")
from timing import events_ms, graph_of  # noqa: E402

# (out features, in features, what they are) at batch 128
SHAPES = [
    (8512, 2048, "Mamba2 in_proj"),
    (2048, 4096, "Mamba2 out_proj"),
    (11008, 2048, "Mamba2-FFN gate+up"),
    (2048, 5504, "Mamba2-FFN down"),
    (4096, 1024, "Table 1 Mamba in_proj"),
    (1024, 2048, "Table 1 Mamba out_proj"),
]
BATCH = 128


def cold_problem(n: int, k: int) -> tuple[float, list[torch.Tensor], torch.Tensor]:
    """(weight MB, enough bf16 weight copies to exceed L2 twice, a batch of inputs)."""
    copies = max(4, math.ceil(120e6 / (n * k * 2)))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    return n * k * 2 / 1e6, ws, torch.randn(BATCH, k, device="cuda", dtype=torch.bfloat16)


def per_gemm_us(step_one, ws, reps: int = 30) -> float:
    """Median µs per GEMM: ``step_one(w)`` for every weight copy, replayed from one CUDA graph."""

    def step():
        for w in ws:
            step_one(w)

    g = graph_of(step)
    return events_ms(g.replay, reps) * 1e3 / len(ws)
