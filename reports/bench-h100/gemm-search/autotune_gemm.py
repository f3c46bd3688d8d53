"""Experiment: inductor's max-autotune GEMMs (its Triton templates, persistent TMA templates and
decompose-K, each benchmarked against cuBLAS by inductor itself) for the decode projections at batch
128, against cuBLAS (``F.linear``) with cold weights.

Each candidate is timed as a CUDA-graph replay of one GEMM per weight copy, over enough copies to
exceed L2 twice, as the step reads them; the figure is the replay's median over copies, in µs."""

from __future__ import annotations

import torch
import torch._inductor.config as ind
import torch.nn.functional as F

from problems import SHAPES, cold_problem, per_gemm_us


def linear(x, w):
    return F.linear(x, w)


def main() -> None:
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    rows = []
    for n, k, what in SHAPES:
        mb, ws, x = cold_problem(n, k)
        ref = F.linear(x, ws[0])
        base = per_gemm_us(lambda w: linear(x, w), ws)
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
                    found[label] = (per_gemm_us(lambda w, fn=fn: fn(x, w), ws), err)
            except Exception as e:  # a template that fails is a result, not a crash
                found[label] = (float("nan"), f"{type(e).__name__}: {str(e)[:80]}")
        rows.append((n, k, what, mb, base, found))
        cells = " | ".join(f"{label}: {t:.1f} µs ({mb / t:.2f} TB/s, err {e if isinstance(e, str) else f'{e:.1e}'})" for label, (t, e) in found.items())
        print(f"| {n} x {k} | {what} | {mb:.1f} MB | cuBLAS {base:.1f} µs ({mb / base:.2f} TB/s) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
