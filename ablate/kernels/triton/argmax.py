"""The greedy pick of a decode step, argmax over each row of the logits, as one Triton kernel.

Same contract as ``ablate.model.static_decode.greedy_tokens_ref``: the index of each row's first
maximum, as (b, 1) int64, written into ``out``. PyTorch's reduction took 10 µs for 128 rows of a
32k vocabulary on the H100 (and a copy into the token buffer after it); the logits were just
written by the LM head and sit in L2, so one program per row reading them is a few µs. NaN logits
are skipped here where PyTorch would pick them (a step with NaN logits is broken either way).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter


@triton.jit
def _row_argmax_kernel(x_ptr, out_ptr, n, x_row, out_row, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_at = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in tl.range(0, n, BLOCK):
        v = tl.load(x_ptr + row * x_row + start + offs, mask=start + offs < n, other=float("-inf")).to(tl.float32)
        take = v > best  # strictly greater: each lane keeps its first maximum
        best = tl.where(take, v, best)
        best_at = tl.where(take, start + offs, best_at)
    top = tl.max(best, 0)
    first = tl.min(tl.where(best == top, best_at, n), 0)  # the first index among the lanes at the maximum
    tl.store(out_ptr + row * out_row, first.to(tl.int64))


def greedy_tokens_triton(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """logits (b, vocab) -> out (b, 1) int64, each row's first argmax."""
    b, n = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    _row_argmax_kernel[(b,)](logits, out, n, logits.stride(0), out.stride(0), BLOCK=min(4096, triton.next_power_of_2(n)), num_warps=8)
    return out
