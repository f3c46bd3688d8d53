"""Experiment: a TMA Triton kernel for decode projections (128 rows) against cuBLAS, weights cold.

y = x @ w.T computed as y.T = w @ x.T: the weight is the tile's M side (BM output features), the
batch its N side; K optionally split over programs, the tile's last program adding the partials.
"""

from __future__ import annotations

import itertools
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from timing import events_ms, graph_of


@triton.jit
def _wx_kernel(w_desc, x_desc, y_ptr, part_ptr, cnt_ptr, N, M, k_per, y_m, y_n,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr, STAGES: tl.constexpr):
    pid_n, pid_b, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k_lo = split * k_per
    for i in tl.range(0, k_per, BK, num_stages=STAGES):
        k = k_lo + i
        w = w_desc.load([pid_n * BM, k])
        x = x_desc.load([pid_b * BN, k])
        acc = tl.dot(w, tl.trans(x), acc)
    offs_n = pid_n * BM + tl.arange(0, BM)
    offs_b = pid_b * BN + tl.arange(0, BN)
    mask = (offs_n[:, None] < N) & (offs_b[None, :] < M)
    y_ptrs = y_ptr + offs_b[None, :] * y_m + offs_n[:, None] * y_n
    if SPLITS == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tile = pid_b * tl.num_programs(0) + pid_n
        here = offs_b[None, :] * N + offs_n[:, None]
        tl.store(part_ptr + split * M * N + here, acc, mask=mask)
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLITS - 1:
            total = tl.zeros((BM, BN), dtype=tl.float32)
            for s in tl.static_range(SPLITS):
                total += tl.load(part_ptr + s * M * N + here, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile, 0)


class WX:
    def __init__(self, w, x, y, bm, bn, bk, splits, stages, warps):
        n, k = w.shape
        m = x.shape[0]
        assert k % (bk * splits) == 0
        self.w_desc = TensorDescriptor(w, [n, k], [k, 1], [bm, bk])
        self.x_desc = TensorDescriptor(x, [m, k], [k, 1], [bn, bk])
        self.y, self.n, self.m, self.k = y, n, m, k
        self.cfg = (bm, bn, bk, splits, stages, warps)
        self.grid = (triton.cdiv(n, bm), triton.cdiv(m, bn), splits)
        self.part = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32, device=w.device)
        self.cnt = torch.zeros(self.grid[0] * self.grid[1], dtype=torch.int32, device=w.device)

    def __call__(self):
        bm, bn, bk, splits, stages, warps = self.cfg
        _wx_kernel[self.grid](self.w_desc, self.x_desc, self.y, self.part, self.cnt, self.n, self.m, self.k // splits,
                              *self.y.stride(), BM=bm, BN=bn, BK=bk, SPLITS=splits, STAGES=stages, num_warps=warps)


SHAPES = [(8512, 2048), (2048, 4096), (11008, 2048), (2048, 5504), (4096, 1024), (1024, 2048), (6016, 1024), (5632, 1024), (1024, 2816)]


def configs(n, k):
    for bm, bn, bk, stages in itertools.product((64, 128), (64, 128), (64, 128), (3, 5)):
        warps = 4 if bm == 64 else 8
        if bm == 128 and bn == 128 and bk == 128 and stages > 4:
            continue  # shared memory
        tiles = triton.cdiv(n, bm) * triton.cdiv(128, bn)
        for splits in (1, 2, 4, 8):
            ctas = tiles * splits
            if k % (bk * splits) or ctas > 600 or (splits > 1 and tiles * (splits // 2) >= 132):
                continue
            yield bm, bn, bk, splits, stages, warps


def main(shapes):
    bf = dict(device="cuda", dtype=torch.bfloat16)
    print("| out x in | MB | cuBLAS µs | best TMA µs | config (BM,BN,BK,splits,stages,warps) | TB/s cuBLAS → TMA | 2nd | 3rd | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k in shapes:
        mb = n * k * 2 / 1e6
        L = max(8, int(300 / mb))
        ws = [torch.randn(n, k, **bf) / k ** 0.5 for _ in range(L)]
        x = torch.randn(128, k, **bf)
        ys = [torch.empty(128, n, **bf) for _ in range(L)]
        ref = torch.nn.functional.linear(x, ws[0])
        g = graph_of(lambda: [torch.nn.functional.linear(x, w, out=None) for w in ws], warmup=1)
        t_cublas = events_ms(g.replay, reps=25) / L * 1e3
        del g
        results = []
        for cfg in configs(n, k):
            try:
                runs = [WX(w, x, y, *cfg) for w, y in zip(ws, ys)]
                runs[0]()
                torch.cuda.synchronize()
                err = ((ys[0].float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                g = graph_of(lambda: [r() for r in runs], warmup=1)
                t = events_ms(g.replay, reps=25) / L * 1e3
                del g
                results.append((t, cfg, err))
            except Exception as e:  # noqa: BLE001 - resource limits for some configs
                print(f"<!-- {n}x{k} {cfg}: {type(e).__name__}: {str(e)[:100]} -->")
        results.sort()
        t, cfg, err = results[0]
        rest = " | ".join(f"{r[0]:.1f} {r[1]}" for r in results[1:3])
        print(f"| {n} x {k} | {mb:.1f} | {t_cublas:.1f} | {t:.1f} | {cfg} | {mb / t_cublas:.2f} → {mb / t:.2f} | {rest} | {err:.1e} |", flush=True)
        del ws, ys


if __name__ == "__main__":
    main([tuple(map(int, s.split("x"))) for s in sys.argv[1:]] or SHAPES)
