"""Experiment: inductor's max-autotune GEMMs (its Triton templates, persistent TMA templates and
decompose-K, each benchmarked against cuBLAS by inductor itself) for the decode projections at batch
128, against cuBLAS (``F.linear``) with cold weights.

Each candidate is timed as a CUDA-graph replay of one GEMM per weight copy, over enough copies to
exceed L2 twice, as the step reads them; the figure is the replay's median over copies, in µs."""

from __future__ import annotations

import math
import sys

import torch
import torch._inductor.config as ind
import torch.nn.functional as F

sys.path.insert(0, "reports/bench-h100/overlap-and-gemm-removed")
from timing import events_ms, graph_of  # noqa: E402

# (out features, in features, variants it serves)
SHAPES = [
    (8512, 2048, "Mamba2 in_proj"),
    (2048, 4096, "Mamba2 out_proj"),
    (11008, 2048, "Mamba2-FFN gate+up"),
    (2048, 5504, "Mamba2-FFN down"),
    (4096, 1024, "Table 1 Mamba in_proj"),
    (1024, 2048, "Table 1 Mamba out_proj"),
]
BATCH = 128


def linear(x, w):
    return F.linear(x, w)


def per_gemm_us(fn, x, ws) -> float:
    outs = [None] * len(ws)

    def step():
        for i, w in enumerate(ws):
            outs[i] = fn(x, w)

    g = graph_of(step)
    return events_ms(g.replay, 30) * 1e3 / len(ws)


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    rows = []
    for n, k, what in SHAPES:
        mb = n * k * 2 / 1e6
        copies = max(4, math.ceil(120e6 / (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
        x = torch.randn(BATCH, k, device=dev, dtype=torch.bfloat16)
        ref = F.linear(x, ws[0])
        base = per_gemm_us(linear, x, ws)
        found = {}
        for label, opts in [
            ("autotune", {"max_autotune_gemm_backends": "ATEN,TRITON"}),
            ("autotune triton only", {"max_autotune_gemm_backends": "TRITON"}),
            ("autotune tma", {"max_autotune_gemm_backends": "TRITON", "triton.enable_persistent_tma_matmul": True}),
        ]:
            torch._dynamo.reset()
            try:
                with ind.patch({"max_autotune": True, "max_autotune_gemm": True, "coordinate_descent_tuning": False, **opts}):
                    fn = torch.compile(linear, dynamic=False)
                    out = fn(x, ws[0])
                    torch.cuda.synchronize()
                    err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                    found[label] = (per_gemm_us(fn, x, ws), err)
            except Exception as e:  # a template that fails is a result, not a crash
                found[label] = (float("nan"), f"{type(e).__name__}: {str(e)[:80]}")
        rows.append((n, k, what, mb, base, found))
        cells = " | ".join(f"{label}: {t:.1f} µs ({mb / t:.2f} TB/s, err {e if isinstance(e, str) else f'{e:.1e}'})" for label, (t, e) in found.items())
        print(f"| {n} x {k} | {what} | {mb:.1f} MB | cuBLAS {base:.1f} µs ({mb / base:.2f} TB/s) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
