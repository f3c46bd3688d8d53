"""The decode step's projections at the paper's shapes: cuBLAS beside the split-K Triton kernel.

    python -m ablate.bench.decode_gemm [--batch 128] [--only table3-mamba2 ...] [--configs "64,64,128,4,4,4;..."]

One row per distinct weight shape (out x in) of the paper-scale Table 1 / Table 3 variants, x of
``batch`` rows in bf16: ``F.linear`` through cuBLAS (PyTorch's default), through cuBLASLt
(``torch.backends.cuda.preferred_blas_library``), and ``ablate.kernels.triton.skinny_matmul`` with
its default launch configuration and each ``--configs`` entry (BLOCK_M,BLOCK_N,BLOCK_K,SPLITS,warps,stages).
Median µs (CUDA events after warm-up, L2 flushed: a decode step reads each weight from HBM); % of
3.0 TB/s counts the weight, x and the output once. Parity: the largest difference to cuBLAS, relative
to its largest output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import typer

from ablate.bench.kernels import HBM_BYTES_PER_S, time_ms


def projection_shapes(only: list[str] | None = None) -> dict[tuple[int, int], list[str]]:
    """(out, in) of every linear layer (and the LM head) -> the variants that have it."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.model.lm import AblateForCausalLM
    from ablate.registry import resolve

    shapes: dict[tuple[int, int], list[str]] = {}
    for name in only or suite_entries(anchors=False):
        with torch.device("meta"):
            model = AblateForCausalLM(resolve(name, "paper").config)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                names = shapes.setdefault(tuple(module.weight.shape), [])
                if name not in names:
                    names.append(name)
    return shapes


def _configs(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]


def main(
    batch: int = typer.Option(128, "--batch", help="rows of x: sequences per decode step"),
    only: list[str] = typer.Option(None, "--only", help="variants whose shapes to time (default: the suite's)"),
    configs: str = typer.Option("", "--configs", help="extra Triton launch configurations, ';'-separated"),
):
    """Time every projection shape of the paper-scale variants at decode batch."""
    if not torch.cuda.is_available():
        raise typer.BadParameter("needs a CUDA device (CPU parity: tests/test_kernels_skinny_matmul.py)")
    from ablate.kernels.triton.skinny_matmul import skinny_matmul, skinny_matmul_config

    extra = _configs(configs)
    heads = ["cuBLAS", "cuBLASLt", "Triton default"] + [f"Triton {','.join(map(str, c))}" for c in extra]
    print(f"batch {batch}, bf16; µs (% of 3 TB/s)")
    print("| out x in | default config | " + " | ".join(heads) + " | max rel. diff | variants |")
    print("|---" * (len(heads) + 4) + "|")
    for (n, k), variants in sorted(projection_shapes(only).items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        x = torch.randn(batch, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        io = (n * k + batch * k + batch * n) * 2
        times = {}
        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            times[library] = time_ms(lambda: F.linear(x, w)) * 1e3
        torch.backends.cuda.preferred_blas_library("cublas")
        ref = F.linear(x, w).float()
        worst = 0.0
        for i, config in enumerate([None, *extra]):
            out = skinny_matmul(x, w, config).float()
            worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
            times[i] = time_ms(lambda: skinny_matmul(x, w, config)) * 1e3
        cells = [f"{us:.1f} ({100 * io / HBM_BYTES_PER_S / (us * 1e-6):.0f}%)" for us in times.values()]
        default = ",".join(map(str, skinny_matmul_config(batch, n, k)))
        print(f"| {n} x {k} | {default} | " + " | ".join(cells) + f" | {worst:.1e} | {', '.join(variants[:4])}"
              + (f" +{len(variants) - 4}" if len(variants) > 4 else "") + " |")


if __name__ == "__main__":
    typer.run(main)
