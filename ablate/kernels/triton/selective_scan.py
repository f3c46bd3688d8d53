"""Fused Mamba (v1) selective scan in Triton, forward and backward. Same contract as
``ablate.kernels.selective_scan.selective_scan_ref``.

One program owns (one batch row, BLOCK_D channels) and walks the sequence in chunks of T steps. Per
chunk it builds the decays exp(dt A) and the drives dt u B as a (BLOCK_D, N, T) register tile, scans
them along T with ``tl.associative_scan``, contracts with C and carries the state to the next chunk:
the (batch, dim, state, length) tensor never reaches HBM. The forward of a training step also keeps
the state entering every chunk (b, L/T, d, n in fp32, 1/T of a full materialization); the backward
walks the chunks in reverse, recomputes each chunk's states from its entry state and scans the
adjoint backwards. Math is fp32 whatever the input dtypes.

Recurrence, per channel d and state n (A is (d, n); dt, u, z are (b, d, l); B, C are (b, n, l)):
    a_t = exp(dt_t A) (0 where a new document starts),  x_t = dt_t u_t B_t,  h_t = a_t h_{t-1} + x_t
    y_t = (sum_n C_t h_t + D u_t) * silu(z_t)
Adjoint, with g_t = dL/dh_t:
    g_t = dy_t C_t + a_{t+1} g_{t+1}   (g at the last step also receives dL/d(final state))
    a_t h_{t-1} = h_t - x_t  gives the decay's gradient without a shifted copy of h
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter



@triton.jit
def _softplus(x):
    # F.softplus (threshold 20). log1p via log(1+e) * e / ((1+e) - 1): exact to rounding even where
    # 1 + e rounds (dt biases sit near softplus^-1(1e-3), where plain log(1 + e) loses digits)
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _combine(a1, b1, a2, b2):
    # segment 1 then segment 2: h -> a2 (a1 h + b1) + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _combine_adjoint(p1, g1, f1, p2, g2, f2):
    # reverse scan of g_t = c_t + a_{t+1} g_{t+1}. Triton's reverse scan calls combine(later, earlier)
    # (it flips, then scans forwards). A segment [i..j] keeps P = a_{i+1}..a_j, G = g_i from inside
    # the segment, F = a_i (the factor its predecessor needs to step into it).
    pf = p2 * f1
    return pf * p1, g2 + pf * g1, f2


# Tiles are time-major: (T, BLOCK_N, BLOCK_D) with channels fastest. Triton's default layout then puts
# channels (and states) across lanes and warps and keeps the T steps of a chunk inside each thread, so
# the scan along T is a sequential in-register loop (no shuffles) and only the sum over states
# crosses threads. A (BLOCK_D, N, T) tile instead spread T over lanes: ~12 shuffles per element
# (sm_90 SASS of both, compiled offline).


@triton.jit
def _load_chunk(
    u_row, dt_row, z_row, B_row, C_row, seq_row,
    t, mt, md, mn,
    s_ul, s_tl, s_zl, s_Bn, s_Bl, s_Cn, s_Cl, s_sl,
    offs_n,
    HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr, NEED_C: tl.constexpr = True,
):
    """One chunk's inputs, fp32: u, dt, z (T, BLOCK_D); B, C (T, BLOCK_N); keep (T,)."""
    m2 = mt[:, None] & md[None, :]
    mb = mt[:, None] & mn[None, :]
    u = tl.load(u_row + t[:, None] * s_ul, mask=m2, other=0.0).to(tl.float32)
    dt = tl.load(dt_row + t[:, None] * s_tl, mask=m2, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_row + t[:, None] * s_zl, mask=m2, other=0.0).to(tl.float32)
    else:
        z = u
    Bt = tl.load(B_row + t[:, None] * s_Bl + offs_n[None, :] * s_Bn, mask=mb, other=0.0).to(tl.float32)
    if NEED_C:
        Ct = tl.load(C_row + t[:, None] * s_Cl + offs_n[None, :] * s_Cn, mask=mb, other=0.0).to(tl.float32)
    else:
        Ct = Bt
    if HAS_SEQ:
        # the state carries into t when t continues t-1's document; position 0 always carries
        # (an initial state belongs to the first document); padding loads 0 == 0 and carries
        cur = tl.load(seq_row + t * s_sl, mask=mt, other=0)
        prev = tl.load(seq_row + (t - 1) * s_sl, mask=mt & (t > 0), other=0)
        keep = (cur == prev) | (t == 0)
    else:
        keep = t >= 0
    return u, dt, z, Bt, Ct, keep


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr,
    y_ptr, hlast_ptr, hck_ptr, hseg_ptr,
    dim, length, dstate, nchunks, chunks_per_seg,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Ad, s_An,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl,
    s_yb, s_yd, s_yl, s_hb, s_hd, s_hn, s_sb, s_sl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr, STORE_CK: tl.constexpr, SEGMENTED: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """y and the final state; with SEGMENTED, program (d block, batch, segment) covers the chunks of
    one segment from the state ``_segment_combine_kernel`` computed for its start."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T)
    md = offs_d < dim
    mn = offs_n < dstate
    mnd = mn[:, None] & md[None, :]
    # exp(dt A) as exp2(dt A log2 e): one multiply fewer per (t, n, d) element
    A2 = tl.load(A_ptr + offs_n[:, None] * s_An + offs_d[None, :] * s_Ad, mask=mnd, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    state_tile = offs_n[:, None] + offs_d[None, :] * dstate  # (b, [chunk or segment,] d, n) storage
    if SEGMENTED:
        h = tl.load(hseg_ptr + (pid_b * nseg + seg) * dim * dstate + state_tile, mask=mnd, other=0.0)
        c0 = seg * chunks_per_seg
        c1 = tl.minimum(c0 + chunks_per_seg, nchunks)
    else:
        if HAS_H0:
            h = tl.load(h0_ptr + pid_b * s_hb + offs_n[:, None] * s_hn + offs_d[None, :] * s_hd, mask=mnd, other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        c0 = 0
        c1 = nchunks

    u_row = u_ptr + pid_b * s_ub + offs_d[None, :] * s_ud
    dt_row = dt_ptr + pid_b * s_tb + offs_d[None, :] * s_td
    z_row = z_ptr + pid_b * s_zb + offs_d[None, :] * s_zd
    y_row = y_ptr + pid_b * s_yb + offs_d[None, :] * s_yd
    B_row = B_ptr + pid_b * s_Bb
    C_row = C_ptr + pid_b * s_Cb
    seq_row = seq_ptr + pid_b * s_sb
    ck_tile = hck_ptr + pid_b * nchunks * dim * dstate + state_tile
    first = (offs_t == 0)[:, None, None]
    last = (offs_t == T - 1)[:, None, None]

    # software prefetch: the next chunk's loads are issued before this chunk's arithmetic, so their
    # latency hides behind it (few programs per SM at the anchor shape: occupancy cannot hide it)
    t = c0 * T + offs_t
    mt = t < length
    u, dt, z, Bt, Ct, keep = _load_chunk(
        u_row, dt_row, z_row, B_row, C_row, seq_row, t, mt, md, mn,
        s_ul, s_tl, s_zl, s_Bn, s_Bl, s_Cn, s_Cl, s_sl, offs_n, HAS_Z, HAS_SEQ,
    )
    for c in range(c0, c1):
        tn = t + T
        mtn = tn < length
        u_n, dt_n, z_n, B_n, C_n, keep_n = _load_chunk(
            u_row, dt_row, z_row, B_row, C_row, seq_row, tn, mtn, md, mn,
            s_ul, s_tl, s_zl, s_Bn, s_Bl, s_Cn, s_Cl, s_sl, offs_n, HAS_Z, HAS_SEQ,
        )
        if STORE_CK:
            tl.store(ck_tile + c * dim * dstate, h, mask=mnd)
        m2 = mt[:, None] & md[None, :]
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # padding: decay 1, drive 0, so the state passes through
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
        if HAS_SEQ:
            dA = tl.where(keep[:, None, None], dA, 0.0)
        x = (dt * u)[:, None, :] * Bt[:, :, None]
        x = tl.where(first, x + dA * h[None, :, :], x)  # fold the carried state into step 0
        _acum, hs = tl.associative_scan((dA, x), 0, _combine)
        y = tl.sum(hs * Ct[:, :, None], axis=1)
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)
        if HAS_D:
            y += u * Dv[None, :]
        if HAS_Z:
            y = y * (z * tl.sigmoid(z))
        tl.store(y_row + t[:, None] * s_yl, y.to(y_ptr.dtype.element_ty), mask=m2)
        t, mt = tn, mtn
        u, dt, z, Bt, Ct, keep = u_n, dt_n, z_n, B_n, C_n, keep_n
    if seg == nseg - 1:  # only the last segment holds the final state (a branch keeps the mask boolean)
        tl.store(hlast_ptr + pid_b * dim * dstate + state_tile, h, mask=mnd)


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _segment_state_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, seq_ptr, S_ptr, P_ptr,
    dim, length, dstate, nchunks, chunks_per_seg,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Ad, s_An, s_Bb, s_Bn, s_Bl, s_sb, s_sl,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """Pass 1 of the split-sequence forward: per (d block, batch, segment), the state a segment
    ends in when it starts from zero (S) and the product of its decays (P), so that
    state_after = P * state_before + S. Reads u, dt and B only; no y."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T)
    md = offs_d < dim
    mn = offs_n < dstate
    mnd = mn[:, None] & md[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_An + offs_d[None, :] * s_Ad, mask=mnd, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d[None, :] * s_ud
    dt_row = dt_ptr + pid_b * s_tb + offs_d[None, :] * s_td
    B_row = B_ptr + pid_b * s_Bb
    seq_row = seq_ptr + pid_b * s_sb
    first = (offs_t == 0)[:, None, None]
    last = (offs_t == T - 1)[:, None, None]
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    p = tl.full((BLOCK_N, BLOCK_D), 1.0, tl.float32)
    c0 = seg * chunks_per_seg
    t = c0 * T + offs_t
    mt = t < length
    u, dt, _z, Bt, _c, keep = _load_chunk(
        u_row, dt_row, u_row, B_row, B_row, seq_row, t, mt, md, mn,
        s_ul, s_tl, s_ul, s_Bn, s_Bl, s_Bn, s_Bl, s_sl, offs_n, False, HAS_SEQ, False,
    )
    for c in range(c0, tl.minimum(c0 + chunks_per_seg, nchunks)):
        tn = t + T
        mtn = tn < length
        u_n, dt_n, _zn, B_n, _cn, keep_n = _load_chunk(
            u_row, dt_row, u_row, B_row, B_row, seq_row, tn, mtn, md, mn,
            s_ul, s_tl, s_ul, s_Bn, s_Bl, s_Bn, s_Bl, s_sl, offs_n, False, HAS_SEQ, False,
        )
        m2 = mt[:, None] & md[None, :]
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
        if HAS_SEQ:
            dA = tl.where(keep[:, None, None], dA, 0.0)
        x = (dt * u)[:, None, :] * Bt[:, :, None]
        x = tl.where(first, x + dA * h[None, :, :], x)
        _acum, hs = tl.associative_scan((dA, x), 0, _combine)
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)
        p = p * tl.reduce(dA, 0, _mul)
        t, mt = tn, mtn
        u, dt, Bt, keep = u_n, dt_n, B_n, keep_n
    out = (pid_b * nseg + seg) * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate
    tl.store(S_ptr + out, h, mask=mnd)
    tl.store(P_ptr + out, p, mask=mnd)


@triton.jit
def _segment_combine_kernel(
    S_ptr, P_ptr, h0_ptr, H_ptr, dim, dstate, nseg, s_hb, s_hd, s_hn,
    HAS_H0: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2: the state entering every segment, H[s + 1] = P[s] H[s] + S[s], H[0] = the initial
    state; a short sequential loop over segments per (batch, state element)."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < dim * dstate
    if HAS_H0:
        d, n = offs // dstate, offs % dstate
        h = tl.load(h0_ptr + pid_b * s_hb + d * s_hd + n * s_hn, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK,), dtype=tl.float32)
    for sg in range(nseg):
        base = (pid_b * nseg + sg) * dim * dstate + offs
        tl.store(H_ptr + base, h, mask=m)
        h = tl.load(P_ptr + base, mask=m, other=0.0) * h + tl.load(S_ptr + base, mask=m, other=0.0)


@triton.jit
def _channel_sum(a, v, PRECISION: tl.constexpr):
    """sum_d a[t, n, d] * v[t, d] -> (t, n) as a batched matrix product on the tensor cores: a
    butterfly sum across the 32 channel lanes costs 5 shuffles per element and dominated the
    backward; this pads v to 16 columns (column 0 real) and pays two layout conversions instead."""
    cols = tl.arange(0, 16)
    vv = tl.where((cols == 0)[None, None, :], v[:, :, None], 0.0)  # (t, d, 16)
    r = tl.dot(a, vv, input_precision=PRECISION)  # (t, n, 16)
    return tl.sum(r, axis=2)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, hck_ptr, dy_ptr, dhl_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, length, dstate, nchunks,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Ad, s_An,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl, s_sb, s_sl,
    s_gb, s_gd, s_gl,  # dy
    s_dub, s_dud, s_dul, s_dtb, s_dtd, s_dtl, s_dzb, s_dzd, s_dzl,
    s_dBb, s_dBn, s_dBl, s_dCb, s_dCn, s_dCl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DHL: tl.constexpr, DOT_REDUCE: tl.constexpr, DOT_PRECISION: tl.constexpr, FLIP_SCAN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T)
    md = offs_d < dim
    mn = offs_n < dstate
    mnd = mn[:, None] & md[None, :]
    A = tl.load(A_ptr + offs_n[:, None] * s_An + offs_d[None, :] * s_Ad, mask=mnd, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    state_tile = offs_n[:, None] + offs_d[None, :] * dstate
    if HAS_DHL:
        g_carry = tl.load(dhl_ptr + pid_b * dim * dstate + state_tile, mask=mnd, other=0.0)
    else:
        g_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    u_row = u_ptr + pid_b * s_ub + offs_d[None, :] * s_ud
    dt_row = dt_ptr + pid_b * s_tb + offs_d[None, :] * s_td
    z_row = z_ptr + pid_b * s_zb + offs_d[None, :] * s_zd
    dy_row = dy_ptr + pid_b * s_gb + offs_d[None, :] * s_gd
    du_row = du_ptr + pid_b * s_dub + offs_d[None, :] * s_dud
    ddt_row = ddt_ptr + pid_b * s_dtb + offs_d[None, :] * s_dtd
    dz_row = dz_ptr + pid_b * s_dzb + offs_d[None, :] * s_dzd
    B_row = B_ptr + pid_b * s_Bb
    C_row = C_ptr + pid_b * s_Cb
    seq_row = seq_ptr + pid_b * s_sb
    dB_row = dB_ptr + pid_b * s_dBb + offs_n[None, :] * s_dBn
    dC_row = dC_ptr + pid_b * s_dCb + offs_n[None, :] * s_dCn
    ck_tile = hck_ptr + pid_b * nchunks * dim * dstate + state_tile
    first = (offs_t == 0)[:, None, None]
    last = (offs_t == T - 1)[:, None, None]
    ones = tl.full((T, BLOCK_N, BLOCK_D), 1.0, tl.float32)

    c = nchunks - 1
    t = c * T + offs_t
    mt = t < length
    u, dt, z, Bt, Ct, keep = _load_chunk(
        u_row, dt_row, z_row, B_row, C_row, seq_row, t, mt, md, mn,
        s_ul, s_tl, s_zl, s_Bn, s_Bl, s_Cn, s_Cl, s_sl, offs_n, HAS_Z, HAS_SEQ,
    )
    m2 = mt[:, None] & md[None, :]
    dout = tl.load(dy_row + t[:, None] * s_gl, mask=m2, other=0.0).to(tl.float32)
    for _it in range(nchunks):
        # prefetch the previous chunk (before chunk 0 every mask is off and nothing is read)
        tp = t - T
        mtp = (tp < length) & (tp >= 0)
        u_p, dt_p, z_p, B_p, C_p, keep_p = _load_chunk(
            u_row, dt_row, z_row, B_row, C_row, seq_row, tp, mtp, md, mn,
            s_ul, s_tl, s_zl, s_Bn, s_Bl, s_Cn, s_Cl, s_sl, offs_n, HAS_Z, HAS_SEQ,
        )
        m2p = mtp[:, None] & md[None, :]
        dout_p = tl.load(dy_row + tp[:, None] * s_gl, mask=m2p, other=0.0).to(tl.float32)
        h0 = tl.load(ck_tile + c * dim * dstate, mask=mnd, other=0.0)

        # recompute this chunk's forward
        if HAS_BIAS:
            raw = dt + bias[None, :]
        else:
            raw = dt
        if SOFTPLUS:
            dtv = _softplus(raw)
        else:
            dtv = raw
        dtv = tl.where(m2, dtv, 0.0)
        dA = tl.exp2(dtv[:, None, :] * A2[None, :, :])
        if HAS_SEQ:
            dA = tl.where(keep[:, None, None], dA, 0.0)
        dtu = dtv * u
        x = dtu[:, None, :] * Bt[:, :, None]
        _acum, hs = tl.associative_scan((dA, tl.where(first, x + dA * h0[None, :, :], x)), 0, _combine)

        # through the gate and the skip
        if HAS_Z:
            y = tl.sum(hs * Ct[:, :, None], axis=1)
            if HAS_D:
                y += u * Dv[None, :]
            sz = tl.sigmoid(z)
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_row + t[:, None] * s_dzl, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dyv = dout * z * sz
        else:
            dyv = dout
        if HAS_D:
            dD_acc += tl.sum(dyv * u, axis=0)

        # adjoint of the state, scanned backwards; the later chunks enter through the last step
        cg = dyv[:, None, :] * Ct[:, :, None]
        cg = tl.where(last, cg + g_carry[None, :, :], cg)
        if FLIP_SCAN:
            # Triton 3.6 lowers reverse=True with lane shuffles even along an in-thread axis (~14 per
            # element on sm_90); flipping the in-thread axis is register renaming
            _pcum, g, _fcum = tl.associative_scan((ones, tl.flip(cg, 0), tl.flip(dA, 0)), 0, _combine_adjoint)
            g = tl.flip(g, 0)
        else:
            _pcum, g, _fcum = tl.associative_scan((ones, cg, dA), 0, _combine_adjoint, reverse=True)
        g_carry = tl.sum(tl.where(first, g * dA, 0.0), axis=0)  # dL/d(state entering this chunk)

        mb = mt[:, None] & mn[None, :]
        if DOT_REDUCE:
            dC_t = _channel_sum(hs, dyv, DOT_PRECISION)
            dB_t = _channel_sum(g, dtu, DOT_PRECISION)
        else:
            dC_t = tl.sum(hs * dyv[:, None, :], axis=2)
            dB_t = tl.sum(g * dtu[:, None, :], axis=2)
        tl.atomic_add(dC_row + t[:, None] * s_dCl, dC_t, mask=mb, sem="relaxed")
        tl.atomic_add(dB_row + t[:, None] * s_dBl, dB_t, mask=mb, sem="relaxed")
        gB = tl.sum(g * Bt[:, :, None], axis=1)
        hx = g * (hs - x)  # g_t a_t h_{t-1}
        dA_acc += tl.sum(hx * dtv[:, None, :], axis=0)
        ddt = u * gB + tl.sum(hx * A[None, :, :], axis=1)
        du = dtv * gB
        if HAS_D:
            du += dyv * Dv[None, :]
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(du_row + t[:, None] * s_dul, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_row + t[:, None] * s_dtl, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)

        c -= 1
        t, mt, m2 = tp, mtp, m2p
        u, dt, z, Bt, Ct, keep, dout = u_p, dt_p, z_p, B_p, C_p, keep_p, dout_p

    # per-batch partials (summed over batch on the host): deterministic, and b x d x n is small
    out_tile = pid_b * dim * dstate + state_tile
    tl.store(dA_ptr + out_tile, dA_acc, mask=mnd)
    tl.store(dh0_ptr + out_tile, g_carry, mask=mnd)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=md)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=md)


# ---------------------------------------------------------------------------------------------
# launch configuration


def fwd_config(dstate: int) -> tuple[int, int, int]:
    """(BLOCK_D, T, num_warps); ``ABLATE_SCAN_FWD_CONFIG="BLOCK_D,T,warps"`` overrides (tuning sweeps).

    Per-element sm_90 SASS (compiled offline, bf16, N=16) is near its best from BLOCK_D 8 with 2 warps
    (~6 FP ops, 1.25 MUFU, ~4 shuffle/shared-memory ops per (t, n, d) element) while giving the most
    programs: parallelism is batch x dim / BLOCK_D programs, only 256 at the anchor shape."""
    env = env_ints("ABLATE_SCAN_FWD_CONFIG")
    if env:
        return env
    n = triton.next_power_of_2(dstate)
    if n <= 16:
        return 8, 16, 2
    if n <= 32:
        return 8, 16, 4
    return 8, 8, 4


def segments(programs: int, nchunks: int, device: torch.device) -> int:
    """How many pieces the forward splits the sequence into. One program per (batch, channel block)
    leaves SMs idle when batch x dim is small (256 programs at the anchor shape); splitting costs a
    first pass over u, dt, B (~60% of the main pass), so it is used only below 2 programs per SM.
    ``ABLATE_SCAN_SEGMENTS`` overrides."""
    env = os.environ.get("ABLATE_SCAN_SEGMENTS")
    if env:
        return max(1, min(int(env), nchunks))
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    if programs >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(4 * sms, programs), nchunks // 4))


def bwd_config(dstate: int, T: int) -> tuple[int, int, bool]:
    """(BLOCK_D, num_warps, reduce over channels with tl.dot); its T is the forward's (the saved states
    are per chunk). ``ABLATE_SCAN_BWD_CONFIG="BLOCK_D,warps,dot"`` overrides."""
    env = env_ints("ABLATE_SCAN_BWD_CONFIG")
    n = triton.next_power_of_2(dstate)
    if env:
        block_d, warps, dot = env
    else:
        # the H100 sweep (reports/kernels/h100/scan-conv/sweep.json, B=2 D=1024 N=16 L=8192): fwd+bwd
        # 3.87 ms with the channel sums as plain reductions against 5.53 ms through tl.dot
        block_d, warps, dot = 16, 4, 0
    # tl.dot needs every dimension >= 16
    return block_d, warps, bool(dot) and n >= 16 and block_d >= 16


# ---------------------------------------------------------------------------------------------
# host side


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, store):
    """(y, final state, the states entering every chunk when ``store``, else an empty tensor)."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    BLOCK_D, T, warps = fwd_config(dstate)
    BLOCK_N = triton.next_power_of_2(dstate)
    nchunks = triton.cdiv(length, T)
    y = torch.empty_like(u)  # keeps u's layout: (b, l, d) storage stays (b, l, d)
    hlast = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    hck = torch.empty(batch, nchunks if store else 0, dim, dstate, device=u.device, dtype=torch.float32)
    dummy = u
    h0 = initial_state if initial_state is not None else dummy
    seq = seq_idx if seq_idx is not None else dummy
    seq_strides = seq_idx.stride() if seq_idx is not None else (0, 0)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), HAS_SEQ=seq_idx is not None)
    dblocks = triton.cdiv(dim, BLOCK_D)
    nseg = segments(batch * dblocks, nchunks, u.device)
    per_seg = triton.cdiv(nchunks, nseg)
    nseg = triton.cdiv(nchunks, per_seg)
    hseg = dummy
    if nseg > 1:
        # split sequence: every segment's final state from zero and its decay product, then the
        # state entering each segment, then all segments in parallel from their entering states
        S = torch.empty(batch, nseg, dim, dstate, device=u.device, dtype=torch.float32)
        P = torch.empty_like(S)
        hseg = torch.empty_like(S)
        _segment_state_kernel[(dblocks, batch, nseg)](
            u, delta, A, B, delta_bias if delta_bias is not None else dummy, seq, S, P,
            dim, length, dstate, nchunks, per_seg,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *seq_strides,
            **flags, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, T=T, num_warps=warps,
        )
        block = 256
        _segment_combine_kernel[(triton.cdiv(dim * dstate, block), batch)](
            S, P, h0, hseg, dim, dstate, nseg, *_strides3(initial_state),
            HAS_H0=initial_state is not None, BLOCK=block,
        )
    _scan_fwd_kernel[(dblocks, batch, nseg)](
        u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, h0, seq,
        y, hlast, hck, hseg,
        dim, length, dstate, nchunks, per_seg,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides3(z),
        *y.stride(), *(_strides3(initial_state)), *seq_strides,
        HAS_D=D is not None, HAS_Z=z is not None, **flags,
        HAS_H0=initial_state is not None, STORE_CK=store, SEGMENTED=nseg > 1,
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, T=T, num_warps=warps,
    )
    return y, hlast, hck


def _scan_backward(dy, dhlast, u, delta, A, B, C, D, z, delta_bias, seq_idx, hck, initial_state, delta_softplus, T):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state); None where an input is.
    T: the forward's chunk length (``hck`` holds the state entering each chunk)."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    BLOCK_D, warps, dot = bwd_config(dstate, T)
    BLOCK_N = triton.next_power_of_2(dstate)
    nchunks = hck.shape[1]
    dev, f32 = u.device, torch.float32
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    # fp32 accumulators for the sums over channels, laid out like B / C ((b, l, n) storage when
    # B and C are (b, n, l) views, as the model passes them)
    dB = _zeros_like_layout(B, f32)
    dC = _zeros_like_layout(C, f32)
    dA = torch.empty(batch, dim, dstate, device=dev, dtype=f32)
    dD = torch.empty(batch, dim, device=dev, dtype=f32)
    dbias = torch.empty(batch, dim, device=dev, dtype=f32)
    dh0 = torch.empty(batch, dim, dstate, device=dev, dtype=f32)
    dummy = u
    dhl = dhlast.float().contiguous() if dhlast is not None else dummy
    grid = (triton.cdiv(dim, BLOCK_D), batch)
    _scan_bwd_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        seq_idx if seq_idx is not None else dummy, hck, dy, dhl,
        du, ddelta, dz if dz is not None else du, dA, dB, dC, dD, dbias, dh0,
        dim, length, dstate, nchunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides3(z),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)),
        *dy.stride(), *du.stride(), *ddelta.stride(), *_strides3(dz), *dB.stride(), *dC.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_SEQ=seq_idx is not None, HAS_DHL=dhlast is not None,
        # fp32 inputs keep fp32-level sums (3 tf32 passes); bf16 gradients round coarser anyway
        DOT_REDUCE=dot, DOT_PRECISION="tf32x3" if u.dtype == torch.float32 else "tf32", FLIP_SCAN=True,
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, T=T, num_warps=warps,
    )
    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        dh0.to(initial_state.dtype) if initial_state is not None else None,
    )


def _empty_like_layout(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # t's memory layout when t is a dense permutation (e.g. a transposed view)
    if t.dim() == 3 and t.stride(1) == 1 and t.stride(2) == t.shape[1]:
        return t.new_empty(t.shape[0], t.shape[2], t.shape[1], dtype=dtype).transpose(1, 2)
    return t.new_empty(t.shape, dtype=dtype)


def _zeros_like_layout(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _empty_like_layout(t, dtype).zero_()


# ---------------------------------------------------------------------------------------------
# the op: torch custom ops, so torch.compile sees one opaque call with its own backward instead of
# tracing into the launchers (an autograd.Function around Triton launches breaks the graph)

@torch.library.custom_op("ablate::selective_scan", mutates_args=())
def _scan_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
    z: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, initial_state: torch.Tensor | None,
    seq_idx: torch.Tensor | None, store: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, store)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, store):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    nchunks = triton.cdiv(length, fwd_config(dstate)[1]) if store else 0
    f32 = torch.float32
    return torch.empty_like(u), u.new_empty(batch, dim, dstate, dtype=f32), u.new_empty(batch, nchunks, dim, dstate, dtype=f32)


@torch.library.custom_op("ablate::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    dy: torch.Tensor, dhlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
    B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None, hck: torch.Tensor, initial_state: torch.Tensor | None, delta_softplus: bool, T: int,
) -> list[torch.Tensor]:
    grads = _scan_backward(dy, dhlast, u, delta, A, B, C, D, z, delta_bias, seq_idx, hck, initial_state, delta_softplus, T)
    # a custom op returns tensors only: an empty tensor stands for "no gradient"
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(dy, dhlast, u, delta, A, B, C, D, z, delta_bias, seq_idx, hck, initial_state, delta_softplus, T):
    def like(t):  # contiguous, as the real op's reductions return them
        return t.new_empty(t.shape) if t is not None else u.new_empty(0)

    batch, dim, _ = u.shape
    dh0 = initial_state.new_empty(batch, dim, A.shape[1]) if initial_state is not None else u.new_empty(0)
    return [
        torch.empty_like(u), torch.empty_like(delta), like(A), _empty_like_layout(B, B.dtype), _empty_like_layout(C, C.dtype),
        like(D), torch.empty_like(z) if z is not None else u.new_empty(0), like(delta_bias), dh0,
    ]


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, store = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, seq_idx, output[2], initial_state)
    ctx.softplus, ctx.stored = bool(delta_softplus), store
    ctx.T = fwd_config(A.shape[1])[1]  # the chunk length the forward used (read once, here)


def _scan_grad(ctx, dy, dhlast, _dhck):
    if not ctx.stored:
        raise RuntimeError("selective scan: backward through a forward run without gradients enabled")
    u, delta, A, B, C, D, z, delta_bias, seq_idx, hck, initial_state = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd_op(
        dy, dhlast, u, delta, A, B, C, D, z, delta_bias, seq_idx, hck, initial_state, ctx.softplus, ctx.T
    )

    def given(grad, t):
        return grad if t is not None else None

    return (
        du, ddelta, dA, dB, dC, given(dD, D), given(dz, z), given(dbias, delta_bias), None,
        given(dh0, initial_state), None, None,
    )


_scan_op.register_autograd(_scan_grad, setup_context=_scan_setup_context)


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None, seq_idx=None
):
    """Same contract and return values as ``selective_scan_ref``: (y in u's dtype, final state fp32)."""
    if u.shape[-1] == 0:
        from ablate.kernels.selective_scan import selective_scan_ref

        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx)
    # the chunk entry states are kept only when a backward can follow
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    y, hlast, _ = _scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, seq_idx, store)
    return y, hlast
