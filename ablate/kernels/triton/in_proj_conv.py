"""An SSM layer's input projection with the conv step in its epilogue, one Triton kernel at decode.

Same contract as ``ablate.model.ssm.in_proj_conv_step_ref``: y = x W^T (+ bias), then over the
feature range [lo, lo + channels) the causal depthwise conv's decode step (state rolled in place)
and SiLU. A decode step of a Mamba or Mamba2 layer ran the projection (cuBLAS) and then the conv
step as a kernel of its own (3 to 5 µs a layer at batch 128 on the H100); the conv is per channel,
so the projection's tile of (features, rows) holds everything it needs. Swap-AB as in
``ablate.kernels.triton.swiglu``: the weight is the tile's long side, loaded by TMA descriptors, the
batch its short side. Only for few rows and Hopper's TMA (or Triton's CPU interpreter, for tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter

MAX_ROWS = 128  # one batch tile


@triton.jit
def _in_proj_conv_kernel(
    w_desc, x_desc, bias_ptr, y_ptr, state_ptr, cw_ptr, cb_ptr,
    N, M, K, lo, channels,
    y_m, y_n, s_b, s_c, s_k, cw_c, cw_k,
    TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n, pid_b = tl.program_id(0), tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, K, BK, num_stages=STAGES):
        acc = tl.dot(w_desc.load([pid_n * BM, k]), tl.trans(x_desc.load([pid_b * BN, k])), acc, input_precision=PRECISION)
    offs_n = pid_n * BM + tl.arange(0, BM)
    offs_b = pid_b * BN + tl.arange(0, BN)
    mn, mb = offs_n < N, offs_b < M
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)[:, None]
    # the projection as the reference hands it to the conv: rounded to the output dtype
    proj = acc.to(y_ptr.dtype.element_ty)
    out = proj.to(tl.float32)
    c = offs_n - lo
    mc = mn & (c >= 0) & (c < channels)
    if tl.sum(mc.to(tl.int32)) > 0:  # a tile that holds conv channels
        m2 = mc[:, None] & mb[None, :]
        s_tile = state_ptr + offs_b[None, :] * s_b + c[:, None] * s_c
        conv = out * tl.load(cw_ptr + c * cw_c + (TAPS - 1) * cw_k, mask=mc, other=0.0).to(tl.float32)[:, None]
        if HAS_CONV_BIAS:
            conv += tl.load(cb_ptr + c, mask=mc, other=0.0).to(tl.float32)[:, None]
        for t in tl.static_range(TAPS - 1):
            held = tl.load(s_tile + t * s_k, mask=m2, other=0.0)
            conv += held.to(tl.float32) * tl.load(cw_ptr + c * cw_c + t * cw_k, mask=mc, other=0.0).to(tl.float32)[:, None]
            if t > 0:  # roll: slot t - 1 takes slot t (each slot is read before it is overwritten)
                tl.store(s_tile + (t - 1) * s_k, held, mask=m2)
        if TAPS > 1:
            tl.store(s_tile + (TAPS - 2) * s_k, proj.to(state_ptr.dtype.element_ty), mask=m2)
        out = tl.where(mc[:, None], conv * tl.sigmoid(conv), out)
    tl.store(y_ptr + offs_b[None, :] * y_m + offs_n[:, None] * y_n, out.to(y_ptr.dtype.element_ty), mask=mn[:, None] & mb[None, :])


def launch_config(features: int, dtype: torch.dtype, sms: int) -> tuple[int, int, int, int]:
    """(BM, BK, stages, warps); ``ABLATE_IN_PROJ_CONV_CONFIG="BM,BK,stages,warps"`` overrides. The
    largest tile that still gives ~0.6 programs per SM, as for the FFN's gate (``swiglu``)."""
    forced = env_ints("ABLATE_IN_PROJ_CONV_CONFIG")
    if forced:
        return forced
    if dtype == torch.float32:  # parity runs only
        return 32, 32, 3, 4
    if triton.cdiv(features, 128) >= 0.6 * sms:
        return 128, 64, 4, 8
    if triton.cdiv(features, 64) >= 0.6 * sms:
        return 64, 64, 5, 4
    return 32, 128, 4, 4


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Few rows, a contiguous weight, 16-byte aligned rows for the descriptors, Hopper or the CPU
    interpreter."""
    k = weight.shape[-1]
    if x.dtype != weight.dtype or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if x.numel() // k > MAX_ROWS or not weight.is_contiguous() or (k * x.element_size()) % 16 or weight.data_ptr() % 16:
        return False
    return x.device.type == "cpu" or torch.cuda.get_device_capability(x.device)[0] >= 9


def in_proj_conv_step_triton(x, weight, bias, lo, conv_state, conv_weight, conv_bias):
    """x (b, K), weight (N, K), conv_state (b, channels, taps - 1) (any strides), conv_weight
    (channels, taps) -> (b, N): the projection with features [lo, lo + channels) convolved and
    SiLU'd; conv_state rolled in place."""
    m, k = x.shape
    n = weight.shape[0]
    channels, taps = conv_weight.shape
    if x.stride(-1) != 1 or x.stride(0) != k or x.data_ptr() % 16:
        x = x.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    bm, bk, stages, warps = launch_config(n, x.dtype, sms)
    bn = max(16, triton.next_power_of_2(m))
    w_desc = TensorDescriptor(weight, [n, k], [k, 1], [bm, bk])
    x_desc = TensorDescriptor(x, [m, k], [k, 1], [bn, bk])
    _in_proj_conv_kernel[(triton.cdiv(n, bm), triton.cdiv(m, bn))](
        w_desc, x_desc, bias if bias is not None else conv_weight, y, conv_state, conv_weight,
        conv_bias if conv_bias is not None else conv_weight,
        n, m, k, lo, channels,
        *y.stride(), *conv_state.stride(), *conv_weight.stride(),
        TAPS=taps, HAS_BIAS=bias is not None, HAS_CONV_BIAS=conv_bias is not None,
        BM=bm, BN=bn, BK=bk, STAGES=stages, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=warps,
    )
    return y
