"""x @ w.T for few rows of x (a decode step: one row per sequence), split over K.

A decode step's projections are (batch <= 256) x K times K x N: they read the weight once and are
bound by its bytes. With one tile of rows there are only N / BLOCK_N programs, too few to stream the
weight from every SM (cuBLAS reached 43-62% of the bandwidth on Mamba2-1B's projections), so the K
range is split over ``SPLITS`` programs per tile too. Each writes its fp32 partial sum to a
workspace and counts itself in; the last to arrive adds the partials (still in L2), writes the
output and resets the counter, so it is one kernel and replays from a CUDA graph.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from ablate.kernels.triton.support import env_ints

if os.environ.get("TRITON_INTERPRET") == "1":  # CPU tests: fixes to triton 3.6's interpreter
    from ablate.kernels.triton.interpreter_compat import patch_interpreter

    patch_interpreter()


@triton.jit
def _skinny_matmul_kernel(
    x_ptr, w_ptr, y_ptr, partial_ptr, count_ptr,
    M, N, K, k_per_split,
    x_m, x_k, w_n, w_k, y_m, y_n,
    SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n, split, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mm, mn = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = split * k_per_split
    for i in range(0, k_per_split, BLOCK_K):  # k_per_split is a multiple of BLOCK_K; masks end it at K
        k = k_lo + i
        mk = k + offs_k < K
        a = tl.load(x_ptr + offs_m[:, None] * x_m + (k + offs_k)[None, :] * x_k, mask=mm[:, None] & mk[None, :], other=0.0)
        b = tl.load(w_ptr + offs_n[None, :] * w_n + (k + offs_k)[:, None] * w_k, mask=mn[None, :] & mk[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
    y_ptrs = y_ptr + offs_m[:, None] * y_m + offs_n[None, :] * y_n
    out_mask = mm[:, None] & mn[None, :]
    if SPLITS == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        tile = pid_m * tl.num_programs(0) + pid_n
        here = offs_m[:, None] * N + offs_n[None, :]
        tl.store(partial_ptr + split * M * N + here, acc, mask=out_mask)
        # release our partial, acquire the others': the last program of the tile sees them all
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLITS - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLITS):
                total += tl.load(partial_ptr + s * M * N + here, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(count_ptr + tile, 0)  # ready for the next call (and the next graph replay)


_WORKSPACES: dict = {}
_OUTGROWN: list = []  # replaced buffers stay alive: a captured CUDA graph may still point at them


def _workspace(device, splits: int, m: int, n: int, tiles: int):
    """Per device: fp32 partials and per-tile counters, grown as needed. Counters start at zero and
    the kernel leaves them at zero, so one buffer serves every call on the stream."""
    import torch

    key = str(device)
    partial, count = _WORKSPACES.get(key, (None, None))
    if partial is None or partial.numel() < splits * m * n:
        partial = torch.empty(splits * m * n, dtype=torch.float32, device=device)
    if count is None or count.numel() < tiles:
        count = torch.zeros(tiles, dtype=torch.int32, device=device)
    _OUTGROWN.extend(t for t in _WORKSPACES.get(key, ()) if t is not None)
    _WORKSPACES[key] = (partial, count)
    return partial, count


def skinny_matmul_config(m: int, n: int, k: int) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLITS, num_warps, num_stages); ABLATE_SKINNY_MATMUL_CONFIG overrides."""
    forced = env_ints("ABLATE_SKINNY_MATMUL_CONFIG")
    if forced:
        return forced
    block_m = max(16, min(triton.next_power_of_2(m), 128))
    block_n, block_k = 64, 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    # about two programs per SM (132 on an H100), each with at least a few K blocks
    splits = max(1, min(264 // tiles, k // (4 * block_k)))
    return block_m, block_n, block_k, splits, 4, 4


def skinny_matmul(x, w, config: tuple | None = None):
    """x: (m, k); w: (n, k). Returns x @ w.T, (m, n) in x's dtype (fp32 accumulation)."""
    import torch

    m, k = x.shape
    n = w.shape[0]
    block_m, block_n, block_k, splits, warps, stages = config or skinny_matmul_config(m, n, k)
    k_per_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    grid = (triton.cdiv(n, block_n), splits, triton.cdiv(m, block_m))
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    partial, count = _workspace(x.device, splits, m, n, grid[0] * grid[2])
    _skinny_matmul_kernel[grid](
        x, w, y, partial, count,
        m, n, k, k_per_split,
        *x.stride(), *w.stride(), *y.stride(),
        SPLITS=splits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return y
