"""The SwiGLU FFN's gate/up projection with its SiLU gate in one Triton kernel, for the decode step.

Same contract as ``ablate.model.layers.gate_up_silu_ref``: silu(x Wg^T) * (x Wu^T), the packed weight
(2F, K) holding Wg's rows then Wu's. At decode a step has at most a few hundred rows, so the GEMM is
bound by reading the weight once; cuBLAS then leaves silu(gate) * up to a kernel of its own (4 µs a
layer at batch 128 on the H100, between two GEMMs where nothing of ours can take it). Here the
weight is the tile's long side (swap-AB: BM gate rows and the matching BM up rows per program, the
batch as the BN side), loaded by TMA descriptors, and the gate is applied before the one store.
Only for few rows and Hopper's TMA (or Triton's CPU interpreter, for tests); the reference runs
everywhere else.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter

MAX_ROWS = 128  # one batch tile: past it every program's weight tile would be read once per tile


@triton.jit
def _gate_up_silu_kernel(
    w_desc, x_desc, y_ptr, F, M, K, y_m, y_f,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr, PRECISION: tl.constexpr,
):
    # a tile past F reads up's first rows as its gate (masked at the store); up's rows past 2F come
    # back zero from the descriptor, as do columns past K
    pid_f, pid_b = tl.program_id(0), tl.program_id(1)
    gate = tl.zeros((BM, BN), dtype=tl.float32)
    up = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, K, BK, num_stages=STAGES):
        xt = tl.trans(x_desc.load([pid_b * BN, k]))
        gate = tl.dot(w_desc.load([pid_f * BM, k]), xt, gate, input_precision=PRECISION)
        up = tl.dot(w_desc.load([F + pid_f * BM, k]), xt, up, input_precision=PRECISION)
    # rounded to the output dtype first, as the reference's projection hands them to silu_mul
    gate = gate.to(y_ptr.dtype.element_ty).to(tl.float32)
    up = up.to(y_ptr.dtype.element_ty).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    offs_f = pid_f * BM + tl.arange(0, BM)
    offs_b = pid_b * BN + tl.arange(0, BN)
    mask = (offs_f[:, None] < F) & (offs_b[None, :] < M)
    tl.store(y_ptr + offs_b[None, :] * y_m + offs_f[:, None] * y_f, y.to(y_ptr.dtype.element_ty), mask=mask)


def launch_config(features: int, dtype: torch.dtype, sms: int) -> tuple[int, int, int, int]:
    """(BM gate rows per program, BK, stages, warps); ``ABLATE_GATE_UP_CONFIG="BM,BK,stages,warps"``
    overrides (``python -m ablate.bench.decode_steps --only ffn --configs ...`` sweeps it). The tile is the largest
    that still gives ~0.6 programs per SM: on the H100 at batch 128, 64 x 64 (5 stages, 8 warps) beat
    cuBLAS + the gate from 5,120 features up, 32 x 128 at 4,096 and 16 x 128 at 1,920, where the
    larger tiles left most SMs idle and lost to it (reports/bench-h100/fused-ffn-gate/)."""
    forced = env_ints("ABLATE_GATE_UP_CONFIG")
    if forced:
        return forced
    if dtype == torch.float32:  # parity runs only: a small tile, so the stages fit in shared memory
        return 32, 32, 3, 4
    if triton.cdiv(features, 64) >= 0.6 * sms:
        return 64, 64, 5, 8
    return (32 if triton.cdiv(features, 32) >= 0.6 * sms else 16), 128, 4, 4


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What the kernel takes: few rows, a contiguous packed weight of even rows, 16-byte aligned rows
    for the descriptors."""
    k = weight.shape[-1]
    if x.dtype != weight.dtype or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if x.numel() // k > MAX_ROWS or weight.shape[0] % 2 or not weight.is_contiguous():
        return False
    if (k * x.element_size()) % 16 or weight.data_ptr() % 16:
        return False
    return x.device.type == "cpu" or torch.cuda.get_device_capability(x.device)[0] >= 9


def gate_up_silu_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K), weight (2F, K) -> (..., F) in x's dtype."""
    k = x.shape[-1]
    f = weight.shape[0] // 2
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1 or rows.stride(0) != k or rows.data_ptr() % 16:
        rows = rows.contiguous()
    m = rows.shape[0]
    y = torch.empty(m, f, dtype=x.dtype, device=x.device)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    bm, bk, stages, warps = launch_config(f, x.dtype, sms)
    bn = max(16, triton.next_power_of_2(m))
    w_desc = TensorDescriptor(weight, list(weight.shape), [k, 1], [bm, bk])
    x_desc = TensorDescriptor(rows, [m, k], [k, 1], [bn, bk])
    _gate_up_silu_kernel[(triton.cdiv(f, bm), triton.cdiv(m, bn))](
        w_desc, x_desc, y, f, m, k, *y.stride(),
        BM=bm, BN=bn, BK=bk, STAGES=stages, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=warps,
    )
    return y.view(*x.shape[:-1], f)
