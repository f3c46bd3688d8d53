"""The decode projections of the paper variants at batch 128 (bf16): cuBLAS through F.linear, as the
model calls it, against the transposed product (W @ x^T)^T and a row-major (K, N) weight. Timed as
CUDA-graph replays over weight copies larger than L2, median per call.

    python3 reports/bench-h100/fewer-kernels/projection_layouts.py   # H100, git 681ad4e -> projection_layouts-681ad4e.txt
"""
import torch, torch.nn.functional as F
from triton.testing import do_bench_cudagraph

def t(fn, ws, x):
    def step():
        for w in ws:
            fn(x, w)
    return float(do_bench_cudagraph(step, rep=100, return_mode="median")) / len(ws) * 1e3

shapes = {"m2 in_proj": (2048, 8512), "m2 out_proj": (4096, 2048), "ffn gate_up": (2048, 11008), "ffn down": (5504, 2048),
          "t1 mamba in": (1024, 4096), "t1 mamba out": (2048, 1024), "t1 x_proj": (2048, 96)}
for M in (128,):
    for name, (k, n) in shapes.items():
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        copies = max(2, -(-120 * 2**20 // (w0.numel() * 2)))
        ws = [w0.clone() for _ in range(copies)]
        wts = [w.t().contiguous() for w in ws]
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
        a = t(lambda x, w: F.linear(x, w), ws, x)
        b = t(lambda x, w: (w @ x.t()).t(), ws, x)
        c = t(lambda x, w: torch.mm(x, w), wts, x)
        bytes_ = n * k * 2
        print(f"{name:14s} M={M} N={n} K={k}: linear {a:6.1f} us ({bytes_/a/1e6:.2f} TB/s)  W@x^T {b:6.1f}  x@Wt(row-major KxN) {c:6.1f}")
