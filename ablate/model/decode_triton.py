"""Triton kernels for the SSM decode steps: each reads its state once and writes it once.

The PyTorch step functions in ``ablate.model.decode`` are the reference (and the CPU path); in eager
PyTorch each elementwise op is its own pass over the (b, heads, head_dim, d_state) state, about ten
passes per step, which dominates a Mamba2 decode step at large batch. These fuse a step into one
kernel (and stay capturable in a CUDA graph). The conv step is one kernel too (compiled from
PyTorch it took three: the window, the output, the in-place roll of the state), and so are the
RMSNorms of Hymba's dt, B and C (three compiled kernels for three short segments of one row). A Mamba
layer's step after its x projection is one kernel too (``mamba_step_triton``: those norms, dt's
projection, the decay and the update, where it took four). Same contracts as the references; tests
hold them equal under Triton's CPU interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with beta 1, threshold 20
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _conv_step_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr,
    channels,
    x_b, x_c,
    s_b, s_c, s_k,
    w_c, w_k,
    y_b, y_c,
    TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # the state holds the previous TAPS - 1 inputs per channel (oldest first). One vector per tap:
    # the cache stores the state tap-major (channels contiguous), so each load and store is coalesced
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < channels
    s_row = state_ptr + b * s_b + offs_c * s_c
    x = tl.load(x_ptr + b * x_b + offs_c * x_c, mask=mc, other=0.0)
    y = x.to(tl.float32) * tl.load(w_ptr + offs_c * w_c + (TAPS - 1) * w_k, mask=mc, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)
    for k in tl.static_range(TAPS - 1):
        held = tl.load(s_row + k * s_k, mask=mc, other=0.0)
        y += held.to(tl.float32) * tl.load(w_ptr + offs_c * w_c + k * w_k, mask=mc, other=0.0).to(tl.float32)
        if k > 0:  # roll: slot k - 1 takes slot k (each slot is read before it is overwritten)
            tl.store(s_row + (k - 1) * s_k, held, mask=mc)
    if TAPS > 1:
        tl.store(s_row + (TAPS - 2) * s_k, x.to(state_ptr.dtype.element_ty), mask=mc)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + b * y_b + offs_c * y_c, y.to(y_ptr.dtype.element_ty), mask=mc)


@triton.jit
def _segment_rms_norm_kernel(
    x_ptr, w0_ptr, w1_ptr, w2_ptr, y_ptr, x_row, y_row, eps,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, BLOCK: tl.constexpr,
):
    # one row: three RMSNorms over consecutive segments of widths S0, S1, S2
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    in0, in1, in2 = offs < S0, (offs >= S0) & (offs < S0 + S1), (offs >= S0 + S1) & (offs < S0 + S1 + S2)
    x = tl.load(x_ptr + row * x_row + offs, mask=in0 | in1 | in2, other=0.0)
    w = tl.load(w0_ptr + offs, mask=in0, other=0.0)
    w += tl.load(w1_ptr + offs - S0, mask=in1, other=0.0)
    w += tl.load(w2_ptr + offs - S0 - S1, mask=in2, other=0.0)
    sq = x.to(tl.float32) * x.to(tl.float32)
    r0 = tl.rsqrt(tl.sum(tl.where(in0, sq, 0.0)) / S0 + eps)
    r1 = tl.rsqrt(tl.sum(tl.where(in1, sq, 0.0)) / S1 + eps)
    r2 = tl.rsqrt(tl.sum(tl.where(in2, sq, 0.0)) / S2 + eps)
    normed = (x.to(tl.float32) * tl.where(in0, r0, tl.where(in1, r1, r2))).to(x.dtype)  # as rms_norm rounds
    y = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(y_ptr + row * y_row + offs, y.to(y_ptr.dtype.element_ty), mask=in0 | in1 | in2)


@triton.jit
def _ssd_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_log_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, y_ptr,
    heads, P, N, heads_per_group,
    s_b, s_h, s_p, s_n,
    x_b, x_h, x_p,
    dt_b, dt_h,
    B_b, B_g, B_n,
    C_b, C_g, C_n,
    y_b, y_h, y_p,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b, h = pid // heads, pid % heads
    g = h // heads_per_group
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    m2 = mp[:, None] & mn[None, :]
    s_ptrs = state_ptr + b * s_b + h * s_h + offs_p[:, None] * s_p + offs_n[None, :] * s_n
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * x_b + h * x_h + offs_p * x_p, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * dt_b + h * dt_h).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    a = -tl.exp(tl.load(A_log_ptr + h).to(tl.float32))
    bv = tl.load(B_ptr + b * B_b + g * B_g + offs_n * B_n, mask=mn, other=0.0).to(tl.float32)
    cv = tl.load(C_ptr + b * C_b + g * C_g + offs_n * C_n, mask=mn, other=0.0).to(tl.float32)
    s = s * tl.exp(dt * a) + (dt * x)[:, None] * bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h).to(tl.float32)
    tl.store(y_ptr + b * y_b + h * y_h + offs_p * y_p, y.to(y_ptr.dtype.element_ty), mask=mp)


@triton.jit
def _mamba_step_kernel(
    u_ptr, dbc_ptr, z_ptr, state_ptr, wdt_ptr, bias_ptr, A_log_ptr, D_ptr, n0_ptr, n1_ptr, n2_ptr, y_ptr,
    rows, dim, R, N, eps,
    u_b, u_d, dbc_b, dbc_c, z_b, z_d,
    s_b, s_d, s_n,
    w_d, w_r, A_d, A_n,
    y_b, y_d,
    HAS_NORM: tl.constexpr, HAS_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # program (block of rows, block of channels): dt's projection is a (rows x R) @ (R x channels)
    # product, so the rows of a program share the block of dt_proj's weight
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_r, offs_n = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_N)
    mb, md, mr, mn = offs_b < rows, offs_d < dim, offs_r < R, offs_n < N
    act = dbc_ptr.dtype.element_ty
    dbc_rows = dbc_ptr + offs_b[:, None] * dbc_b
    dt = tl.load(dbc_rows + offs_r[None, :] * dbc_c, mask=mb[:, None] & mr[None, :], other=0.0)
    bv = tl.load(dbc_rows + (R + offs_n[None, :]) * dbc_c, mask=mb[:, None] & mn[None, :], other=0.0)
    cv = tl.load(dbc_rows + (R + N + offs_n[None, :]) * dbc_c, mask=mb[:, None] & mn[None, :], other=0.0)
    if HAS_NORM:  # the RMSNorms of dt, B and C, rounded as rms_norm rounds
        dt = _row_rms_norm(dt, n0_ptr, offs_r, mr, R, eps)
        bv = _row_rms_norm(bv, n1_ptr, offs_n, mn, N, eps)
        cv = _row_rms_norm(cv, n2_ptr, offs_n, mn, N, eps)
    w = tl.load(wdt_ptr + offs_d[None, :] * w_d + offs_r[:, None] * w_r, mask=md[None, :] & mr[:, None], other=0.0)
    dt = tl.dot(dt.to(act), w.to(act), input_precision=PRECISION).to(act).to(tl.float32)  # as F.linear rounds
    dt = _softplus(dt + tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :])
    m_bd = mb[:, None] & md[None, :]
    m3 = m_bd[:, :, None] & mn[None, None, :]
    a = -tl.exp(tl.load(A_log_ptr + offs_d[:, None] * A_d + offs_n[None, :] * A_n, mask=md[:, None] & mn[None, :], other=0.0).to(tl.float32))
    u = tl.load(u_ptr + offs_b[:, None] * u_b + offs_d[None, :] * u_d, mask=m_bd, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + offs_b[:, None, None] * s_b + offs_d[None, :, None] * s_d + offs_n[None, None, :] * s_n
    s = tl.load(s_ptrs, mask=m3, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, :, None] * a[None, :, :]) + (dt * u)[:, :, None] * bv.to(tl.float32)[:, None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m3)
    y = tl.sum(s * cv.to(tl.float32)[:, None, :], axis=2)
    if HAS_D:
        y += u * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    z = tl.load(z_ptr + offs_b[:, None] * z_b + offs_d[None, :] * z_d, mask=m_bd, other=0.0).to(tl.float32)
    y *= z * tl.sigmoid(z)
    tl.store(y_ptr + offs_b[:, None] * y_b + offs_d[None, :] * y_d, y.to(y_ptr.dtype.element_ty), mask=m_bd)


@triton.jit
def _row_rms_norm(x, w_ptr, offs, m, width, eps):
    # RMSNorm of each row of x (rows, BLOCK) over its first ``width`` columns (the rest are zero)
    dtype = x.dtype
    x = x.to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=1) / width + eps)
    normed = (x * r[:, None]).to(dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    return (w[None, :] * normed).to(w_ptr.dtype.element_ty)


@triton.jit
def _selective_update_kernel(
    state_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, N,
    s_b, s_d, s_n,
    u_b, u_d,
    dl_b, dl_d,
    A_d, A_n,
    B_b, B_n,
    C_b, C_n,
    z_b, z_d,
    y_b, y_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md, mn = offs_d < dim, offs_n < N
    m2 = md[:, None] & mn[None, :]
    s_ptrs = state_ptr + b * s_b + offs_d[:, None] * s_d + offs_n[None, :] * s_n
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + b * u_b + offs_d * u_d, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + b * dl_b + offs_d * dl_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    a = tl.load(A_ptr + offs_d[:, None] * A_d + offs_n[None, :] * A_n, mask=m2, other=0.0).to(tl.float32)
    bv = tl.load(B_ptr + b * B_b + offs_n * B_n, mask=mn, other=0.0).to(tl.float32)
    cv = tl.load(C_ptr + b * C_b + offs_n * C_n, mask=mn, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, None] * a) + (dt * u)[:, None] * bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * cv[None, :], axis=1)
    if HAS_D:
        y += u * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * z_b + offs_d * z_d, mask=md, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + b * y_b + offs_d * y_d, y.to(y_ptr.dtype.element_ty), mask=md)


def conv_step_triton(x, state, weight, bias=None, activation="silu"):
    """Same contract as ``ablate.model.decode.conv_step``."""
    import torch

    if activation not in ("silu", None):
        raise ValueError(f"unsupported conv activation {activation!r}")
    b, channels = x.shape
    taps = weight.shape[-1]
    y = torch.empty_like(x)
    # (BLOCK_C, num_warps); ABLATE_CONV_STEP_CONFIG overrides (ablate.bench.decode_steps sweeps it)
    block_c, warps = env_ints("ABLATE_CONV_STEP_CONFIG") or (min(triton.next_power_of_2(channels), 256), 4)
    grid = (b, triton.cdiv(channels, block_c))
    _conv_step_kernel[grid](
        x, state, weight, bias if bias is not None else weight, y,
        channels,
        *x.stride(), *state.stride(), *weight.stride(), *y.stride(),
        TAPS=taps, HAS_BIAS=bias is not None, SILU=activation == "silu",
        BLOCK_C=block_c, num_warps=warps,
    )
    return y


def segment_rms_norm_triton(x, weights, eps):
    """Same contract as ``ablate.model.decode.segment_rms_norm``."""
    import torch

    w0, w1, w2 = weights
    sizes = (w0.numel(), w1.numel(), w2.numel())
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape, dtype=torch.result_type(x, w0), device=x.device)
    _segment_rms_norm_kernel[(rows.shape[0],)](
        rows, w0, w1, w2, out, rows.stride(0), out.stride(0), eps,
        S0=sizes[0], S1=sizes[1], S2=sizes[2], BLOCK=triton.next_power_of_2(sum(sizes)),
    )
    return out.view(*x.shape[:-1], x.shape[-1])


def ssd_state_update_triton(state, x, dt, A_log, B, C, D=None, dt_bias=None, dt_softplus=False):
    """Same contract as ``ablate.model.decode.ssd_state_update``."""
    import torch

    b, heads, p = x.shape
    n = state.shape[-1]
    groups = B.shape[1]
    y = torch.empty_like(x)
    block_n = triton.next_power_of_2(n)
    # (BLOCK_P, num_warps); ABLATE_SSD_UPDATE_CONFIG overrides (ablate.bench.decode_steps sweeps it)
    block_p, warps = env_ints("ABLATE_SSD_UPDATE_CONFIG") or (max(1, min(triton.next_power_of_2(p), 4096 // block_n)), 4)
    grid = (b * heads, triton.cdiv(p, block_p))
    _ssd_update_kernel[grid](
        state, x, dt, A_log, B, C, D if D is not None else A_log, dt_bias if dt_bias is not None else A_log, y,
        heads, p, n, heads // groups,
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, BLOCK_P=block_p, BLOCK_N=block_n,
        num_warps=warps,
    )
    return y


def mamba_step_triton(u, dbc, z, ssm_state, dt_weight, dt_bias, A_log, D, norms, eps):
    """Same contract as ``ablate.model.ssm.mamba_step_ref``: the dt/B/C norms, dt's projection and the
    state update of one Mamba decode step in one kernel."""
    import torch

    b, dim = u.shape
    n, r = ssm_state.shape[-1], dt_weight.shape[1]
    y = torch.empty_like(u)
    # (BLOCK_B, BLOCK_D, num_warps); ABLATE_MAMBA_STEP_CONFIG overrides. tl.dot takes blocks of >= 16;
    # 16 x 32 x 4 warps ran fastest inside the decode step of Table 1's Mamba on the H100 (isolated
    # timings ranked 16 x 16 first: reports/bench-h100/fused-mamba-step/)
    block_b, block_d, warps = env_ints("ABLATE_MAMBA_STEP_CONFIG") or (16, 32, 4)
    grid = (triton.cdiv(b, block_b), triton.cdiv(dim, block_d))
    n0, n1, n2 = norms if norms is not None else (dt_weight,) * 3
    _mamba_step_kernel[grid](
        u, dbc, z, ssm_state, dt_weight, dt_bias, A_log, D if D is not None else dt_bias, n0, n1, n2, y,
        b, dim, r, n, eps,
        *u.stride(), *dbc.stride(), *z.stride(), *ssm_state.stride(), *dt_weight.stride(), *A_log.stride(), *y.stride(),
        HAS_NORM=norms is not None, HAS_D=D is not None, PRECISION="ieee" if dbc.dtype == torch.float32 else "tf32",
        BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_R=max(16, triton.next_power_of_2(r)), BLOCK_N=triton.next_power_of_2(n),
        num_warps=warps,
    )
    return y


def selective_state_update_triton(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as ``ablate.model.decode.selective_state_update``."""
    import torch

    b, dim = u.shape
    n = state.shape[-1]
    y = torch.empty_like(u)
    block_n = triton.next_power_of_2(n)
    block_d = max(1, min(triton.next_power_of_2(dim), 2048 // block_n))
    grid = (b, triton.cdiv(dim, block_d))
    dummy = u
    zz = z if z is not None else dummy
    _selective_update_kernel[grid](
        state, u, delta, A, B, C, D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy, y,
        dim, n,
        *state.stride(), *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return y
