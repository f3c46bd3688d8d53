"""Causal depthwise conv1d (+ bias, + SiLU) in Triton, forward and backward. Same contract as
``ablate.kernels.conv.causal_conv1d_ref``: x (b, c, l) read through its strides (the model passes
(b, l, c) storage), weight (c, k) with k <= 8, optional initial_state (b, c, k-1), optional seq_idx.

Forward: a (channels, positions) tile is the sum of k shifted loads of x (the shifted reloads hit L1).
Backward: dx[t] = sum_s w[k-1-s] * dpre[t+s] needs dpre = dy * silu'(pre) at the k-1 positions after
each tile too. Recomputing them per shift would cost k SiLU derivatives per element (MUFU-bound), so
tiles overlap by k-1 positions instead: each computes dpre once over BLOCK_L positions and owns the
first BLOCK_L-(k-1), reading the shifted dpre with ``tl.gather`` inside registers. Weight and bias
gradients are summed per program over a run of tiles, then over programs on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.kernels.conv import conv_final_state
from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter


@triton.jit
def _load_x(x_row, init_row, pos, mc, length, s_xl, s_il, K: tl.constexpr, HAS_INIT: tl.constexpr):
    """x at positions pos (BLOCK_L,), fp32 (BLOCK_C, BLOCK_L); negative positions read the initial state
    (zero without one), positions past the end read zero."""
    inside = (pos >= 0) & (pos < length)
    v = tl.load(x_row + pos[None, :] * s_xl, mask=mc[:, None] & inside[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        before = (pos < 0) & (pos >= 1 - K)
        v += tl.load(init_row + (pos + K - 1)[None, :] * s_il, mask=mc[:, None] & before[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _seq_at(seq_row, pos, length, s_sl):
    # document of each position; the initial state's positions (< 0) belong to position 0's document
    return tl.load(seq_row + tl.minimum(tl.maximum(pos, 0), length - 1) * s_sl)


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, init_ptr, seq_ptr, y_ptr,
    channels, length,
    s_xb, s_xc, s_xl, s_wc, s_wk, s_ib, s_ic, s_il, s_sb, s_sl, s_yb, s_yc, s_yl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pos = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mc = offs_c < channels
    x_row = x_ptr + pid_b * s_xb + offs_c[:, None] * s_xc
    init_row = init_ptr + pid_b * s_ib + offs_c[:, None] * s_ic
    seq_row = seq_ptr + pid_b * s_sb
    if HAS_SEQ:
        doc = _seq_at(seq_row, pos, length, s_sl)
    acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(K):
        p = pos - (K - 1) + j
        xv = _load_x(x_row, init_row, p, mc, length, s_xl, s_il, K, HAS_INIT)
        if HAS_SEQ:
            xv = tl.where((_seq_at(seq_row, p, length, s_sl) == doc)[None, :], xv, 0.0)
        w = tl.load(w_ptr + offs_c * s_wc + j * s_wk, mask=mc, other=0.0).to(tl.float32)
        acc += w[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m = mc[:, None] & (pos < length)[None, :]
    tl.store(y_ptr + pid_b * s_yb + offs_c[:, None] * s_yc + pos[None, :] * s_yl, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, b_ptr, init_ptr, seq_ptr, dy_ptr,
    dx_ptr, dinit_ptr, dw_ptr, db_ptr,
    channels, length, tiles_per_prog,
    s_xb, s_xc, s_xl, s_wc, s_wk, s_ib, s_ic, s_il, s_sb, s_sl, s_gb, s_gc, s_gl,
    s_dxb, s_dxc, s_dxl, s_dib, s_dic, s_dil,
    K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, INIT_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    n_split = tl.num_programs(2)
    STEP: tl.constexpr = BLOCK_L - (K - 1)
    # with an initial-state gradient the tiles start k-1 positions early, so the first tile's owned
    # positions include the initial state's
    SHIFT: tl.constexpr = (K - 1) if INIT_GRAD else 0
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    lane = tl.arange(0, BLOCK_L)
    kcol = tl.arange(0, KP)
    mc = offs_c < channels
    x_row = x_ptr + pid_b * s_xb + offs_c[:, None] * s_xc
    init_row = init_ptr + pid_b * s_ib + offs_c[:, None] * s_ic
    dy_row = dy_ptr + pid_b * s_gb + offs_c[:, None] * s_gc
    seq_row = seq_ptr + pid_b * s_sb
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_C, KP), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for it in range(tiles_per_prog):
        tile = pid_s * tiles_per_prog + it
        pos = tile * STEP - SHIFT + lane
        if HAS_SEQ:
            doc = _seq_at(seq_row, pos, length, s_sl)
        # pre-activation over the whole tile
        pre = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        for j in tl.static_range(K):
            p = pos - (K - 1) + j
            xv = _load_x(x_row, init_row, p, mc, length, s_xl, s_il, K, HAS_INIT)
            if HAS_SEQ:
                xv = tl.where((_seq_at(seq_row, p, length, s_sl) == doc)[None, :], xv, 0.0)
            w = tl.load(w_ptr + offs_c * s_wc + j * s_wk, mask=mc, other=0.0).to(tl.float32)
            pre += w[:, None] * xv
        if HAS_BIAS:
            pre += bias[:, None]
        out = (pos >= 0) & (pos < length)
        dpre = tl.load(dy_row + pos[None, :] * s_gl, mask=mc[:, None] & out[None, :], other=0.0).to(tl.float32)
        if SILU:
            sg = tl.sigmoid(pre)
            dpre = dpre * sg * (1.0 + pre * (1.0 - sg))
        # dx at owned positions: output t+s reads x[t] through tap k-1-s
        dx = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        for s in tl.static_range(K):
            idx = tl.minimum(lane + s, BLOCK_L - 1)
            shifted = tl.gather(dpre, tl.broadcast_to(idx[None, :], (BLOCK_C, BLOCK_L)), 1)
            if HAS_SEQ:
                shifted = tl.where((tl.gather(doc, idx, 0) == doc)[None, :], shifted, 0.0)
            w = tl.load(w_ptr + offs_c * s_wc + (K - 1 - s) * s_wk, mask=mc, other=0.0).to(tl.float32)
            dx += w[:, None] * shifted
        own = (lane < STEP) & (pos < length)
        tl.store(
            dx_ptr + pid_b * s_dxb + offs_c[:, None] * s_dxc + pos[None, :] * s_dxl,
            dx.to(dx_ptr.dtype.element_ty),
            mask=mc[:, None] & (own & (pos >= 0))[None, :],
        )
        if INIT_GRAD:
            tl.store(
                dinit_ptr + pid_b * s_dib + offs_c[:, None] * s_dic + (pos + K - 1)[None, :] * s_dil,
                dx.to(dinit_ptr.dtype.element_ty),
                mask=mc[:, None] & (own & (pos < 0) & (pos >= 1 - K))[None, :],
            )
        # weight and bias gradients from the owned outputs
        dpo = tl.where((own & out)[None, :], dpre, 0.0)
        db_acc += tl.sum(dpo, axis=1)
        for j in tl.static_range(K):
            p = pos - (K - 1) + j
            xv = _load_x(x_row, init_row, p, mc, length, s_xl, s_il, K, HAS_INIT)
            if HAS_SEQ:
                xv = tl.where((_seq_at(seq_row, p, length, s_sl) == doc)[None, :], xv, 0.0)
            dw_acc += tl.where((kcol == j)[None, :], tl.sum(dpo * xv, axis=1)[:, None], 0.0)
    part = pid_b * n_split + pid_s
    mk = mc[:, None] & (kcol < K)[None, :]
    tl.store(dw_ptr + (part * channels + offs_c[:, None]) * K + kcol[None, :], dw_acc, mask=mk)
    tl.store(db_ptr + part * channels + offs_c, db_acc, mask=mc)


def fwd_config() -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_L, num_warps); ``ABLATE_CONV_FWD_CONFIG`` overrides."""
    return env_ints("ABLATE_CONV_FWD_CONFIG") or (64, 64, 4)


def bwd_config(masked: bool = False) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_L, num_warps); ``ABLATE_CONV_BWD_CONFIG`` overrides. With document indices or
    an initial state the 4-warp tile spills ~2 KB per thread on sm_90 (offline ptxas report); 8 warps
    halve the per-thread tile."""
    return env_ints("ABLATE_CONV_BWD_CONFIG") or ((64, 64, 8) if masked else (64, 64, 4))


def _splits(batch: int, cblocks: int, tiles: int, device: torch.device) -> int:
    # enough programs for ~4 per SM; each sums its weight gradient over a run of tiles
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(tiles, triton.cdiv(4 * sms, batch * cblocks)))


def _conv_forward(x, weight, bias, silu, initial_state, seq_idx):
    batch, channels, length = x.shape
    K = weight.shape[1]
    BLOCK_C, BLOCK_L, warps = fwd_config()
    y = torch.empty_like(x)
    dummy = x
    init = initial_state if initial_state is not None else dummy
    seq = seq_idx if seq_idx is not None else dummy
    _conv_fwd_kernel[(triton.cdiv(length, BLOCK_L), triton.cdiv(channels, BLOCK_C), batch)](
        x, weight, bias if bias is not None else dummy, init, seq, y,
        channels, length,
        *x.stride(), *weight.stride(),
        *(initial_state.stride() if initial_state is not None else (0, 0, 0)),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)),
        *y.stride(),
        K=K, HAS_BIAS=bias is not None, SILU=silu,
        HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_C=BLOCK_C, BLOCK_L=BLOCK_L, num_warps=warps,
    )
    return y, conv_final_state(x, initial_state, K)


def _conv_backward(dy, dfinal, x, weight, bias, initial_state, seq_idx, silu, init_grad):
    """Gradients of (x, weight, bias, initial_state); None where an input is None or, for the
    initial state, where ``init_grad`` is false."""
    batch, channels, length = x.shape
    K = weight.shape[1]
    BLOCK_C, BLOCK_L, warps = bwd_config(seq_idx is not None or initial_state is not None)
    if BLOCK_L <= K - 1:
        raise ValueError(f"conv backward BLOCK_L={BLOCK_L} must exceed the kernel width - 1")
    init_grad = initial_state is not None and init_grad
    shift = K - 1 if init_grad else 0
    tiles = triton.cdiv(length + shift, BLOCK_L - (K - 1))
    cblocks = triton.cdiv(channels, BLOCK_C)
    splits = _splits(batch, cblocks, tiles, x.device)
    per_prog = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_prog)
    dx = torch.empty_like(x)
    dinit = torch.empty(batch, channels, K - 1, device=x.device, dtype=initial_state.dtype) if init_grad else dx
    dw = torch.empty(batch * splits, channels, K, device=x.device, dtype=torch.float32)
    db = torch.empty(batch * splits, channels, device=x.device, dtype=torch.float32)
    dummy = x
    _conv_bwd_kernel[(cblocks, batch, splits)](
        x, weight, bias if bias is not None else dummy,
        initial_state if initial_state is not None else dummy,
        seq_idx if seq_idx is not None else dummy, dy,
        dx, dinit, dw, db,
        channels, length, per_prog,
        *x.stride(), *weight.stride(),
        *(initial_state.stride() if initial_state is not None else (0, 0, 0)),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)),
        *dy.stride(), *dx.stride(), *(dinit.stride() if init_grad else (0, 0, 0)),
        K=K, KP=triton.next_power_of_2(K), HAS_BIAS=bias is not None, SILU=silu,
        HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None, INIT_GRAD=init_grad,
        BLOCK_C=BLOCK_C, BLOCK_L=BLOCK_L, num_warps=warps,
    )
    if dfinal is not None:
        # the final state is the last k-1 inputs of [initial_state, x]: route its gradient there
        dx, dinit = _add_final_state_grad(dfinal, dx, dinit if init_grad else None, length, K)
    return (
        dx,
        dw.sum(0).to(weight.dtype),
        db.sum(0).to(bias.dtype) if bias is not None else None,
        dinit if init_grad else None,
    )


def _add_final_state_grad(dfinal, dx, dinit, length, K):
    dfinal = dfinal.to(dx.dtype)
    keep = min(length, K - 1)  # how many of the final state's positions are x's
    dx = dx.clone()
    dx[..., length - keep :] += dfinal[..., K - 1 - keep :]
    if dinit is not None and keep < K - 1:
        dinit = dinit.clone()
        dinit[..., length:] += dfinal[..., : K - 1 - keep].to(dinit.dtype)
    return dx, dinit


# ---------------------------------------------------------------------------------------------
# the op: torch custom ops, so torch.compile sees one opaque call with its own backward instead of
# tracing into the launchers (an autograd.Function around Triton launches breaks the graph)


@torch.library.custom_op("ablate::causal_conv1d", mutates_args=())
def _conv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
    initial_state: torch.Tensor | None, seq_idx: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _conv_forward(x, weight, bias, silu, initial_state, seq_idx)


@_conv_op.register_fake
def _(x, weight, bias, silu, initial_state, seq_idx):
    return torch.empty_like(x), conv_final_state(x, initial_state, weight.shape[1])


@torch.library.custom_op("ablate::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(
    dy: torch.Tensor, dfinal: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, seq_idx: torch.Tensor | None, silu: bool, init_grad: bool,
) -> list[torch.Tensor]:
    grads = _conv_backward(dy, dfinal, x, weight, bias, initial_state, seq_idx, silu, init_grad)
    # a custom op returns tensors only: an empty tensor stands for "no gradient"
    return [g if g is not None else x.new_empty(0) for g in grads]


@_conv_bwd_op.register_fake
def _(dy, dfinal, x, weight, bias, initial_state, seq_idx, silu, init_grad):
    dinit = x.new_empty(*x.shape[:2], weight.shape[1] - 1, dtype=initial_state.dtype) if initial_state is not None and init_grad else x.new_empty(0)
    return [torch.empty_like(x), weight.new_empty(weight.shape), bias.new_empty(bias.shape) if bias is not None else x.new_empty(0), dinit]


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, silu, initial_state, seq_idx = inputs
    ctx.save_for_backward(x, weight, bias, initial_state, seq_idx)
    ctx.silu = silu
    ctx.init_grad = initial_state is not None and initial_state.requires_grad


def _conv_grad(ctx, dy, dfinal):
    x, weight, bias, initial_state, seq_idx = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    dx, dw, db, dinit = _conv_bwd_op(dy, dfinal, x, weight, bias, initial_state, seq_idx, ctx.silu, ctx.init_grad)
    return dx, dw, db if bias is not None else None, None, dinit if ctx.init_grad else None, None


_conv_op.register_autograd(_conv_grad, setup_context=_conv_setup_context)


def causal_conv1d_triton(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None):
    """Same contract and return values as ``causal_conv1d_ref``: (y, final_state)."""
    if activation not in (None, "silu"):
        raise ValueError(f"unsupported conv activation {activation!r}")
    if x.shape[-1] == 0 or weight.shape[1] == 1:
        from ablate.kernels.conv import causal_conv1d_ref

        return causal_conv1d_ref(x, weight, bias, activation, initial_state, seq_idx)
    return tuple(_conv_op(x, weight, bias, activation == "silu", initial_state, seq_idx))
