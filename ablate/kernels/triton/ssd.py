"""Mamba2 SSD as a chunked Triton scan, forward and backward (our own kernels; written for triton 3.6
on Hopper, where fla-core refuses its gated backward).

Notation, per batch row and head (``ablate/kernels/ssd.py`` has the recurrence): the sequence is cut
into chunks of Q steps; inside a chunk ``a_t`` is the running sum of ``dt * A`` (a log-decay, <= 0),
``xdt_s = x_s * dt_s`` and ``CB_ts = <C_t, B_s>``. Then

    y_t     = sum_{s<=t} CB_ts exp(a_t - a_s) xdt_s  +  exp(a_t) S0 C_t  +  D x_t      (chunk scan)
    S_end   = sum_s exp(a_end - a_s) xdt_s B_s^T                                       (chunk state)
    S0[c+1] = exp(a_end[c]) S0[c] + S_end[c]                                           (state passing)

Kernels (forward): ``_cb`` (C B^T per chunk and B/C group, shared by the group's heads, lower
triangle only), ``_outer`` (a weighted sum of outer products over a chunk: the chunk states, and in
the backward the gradient reaching each chunk's entering state), ``_pass`` (the sequential pass
over chunks), ``_scan`` (the output: decay-masked CB times x on chip, plus the entering state).
Backward: ``_pass_bwd`` (the pass in reverse), ``_scan_bwd_dx`` (dx and per-position sums for dt,
D and the decays), ``_scan_bwd_dc`` / ``_scan_bwd_db`` (dC, dB, summed over the heads of a group
inside one program, so no (b, l, heads, d_state) buffer is ever written). The gradient of the
decays needs no Q x Q reduction: it follows from per-position dot products,

    d a_t = <C_t, dC_t^(h)> - <xdt_t, dxdt_t>  (+ <G[c+1], S0[c+1]> at the chunk's last step),

where ``dC^(h)`` is one head's share of dC and ``G`` the gradient of the entering states. The
cumulative sums, the reverse cumulative sum and the final reductions are torch ops on small
(b, h, l) tensors.

Packed documents (``seq_idx``): every product that crosses a document start is dropped, exactly as
in the chunked reference. Ragged lengths: loads past the sequence are masked; the decays are padded
with dt = 0 (no decay, no input). Matrix products take bf16/fp16 operands with fp32 accumulation,
or fp32 operands in IEEE mode (Triton's default for fp32 is tf32, too coarse for the fp32 parity).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import interpreting_on_cpu

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter

# ---------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _cb_kernel(
    c_ptr, b_ptr, out_ptr,
    seqlen, chunk, dstate, nchunks,
    s_cb, s_cl, s_cg, s_cn,
    s_bb, s_bl, s_bg, s_bn,
    BM: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr,
):
    """out[b, c, g, t, s] = <C_t, B_s> for s <= t (tiles wholly above the diagonal are skipped and
    stay unwritten: every reader masks s > t with tl.where)."""
    pid = tl.program_id(0)
    n_s = tl.cdiv(chunk, BS)
    pid_m, pid_s = pid // n_s, pid % n_s
    if pid_s * BS > pid_m * BM + BM - 1:
        return
    pid_bc, g = tl.program_id(1), tl.program_id(2)
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    ngroups = tl.num_programs(2)
    t0 = c * chunk
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_s = pid_s * BS + tl.arange(0, BS)
    ok_m = (offs_m < chunk) & (t0 + offs_m < seqlen)
    ok_s = (offs_s < chunk) & (t0 + offs_s < seqlen)
    c_base = c_ptr + bi * s_cb + g * s_cg + (t0 + offs_m) * s_cl
    b_base = b_ptr + bi * s_bb + g * s_bg + (t0 + offs_s) * s_bl
    acc = tl.zeros((BM, BS), dtype=tl.float32)
    for k0 in range(0, dstate, BK):
        offs_k = k0 + tl.arange(0, BK)
        ok_k = offs_k < dstate
        cc = tl.load(c_base[:, None] + offs_k[None, :] * s_cn, mask=ok_m[:, None] & ok_k[None, :], other=0.0)
        bb = tl.load(b_base[None, :] + offs_k[:, None] * s_bn, mask=ok_k[:, None] & ok_s[None, :], other=0.0)
        acc += _dot(cc, bb, IEEE)
    out = out_ptr + ((bi * nchunks + c) * ngroups + g) * chunk * chunk
    tl.store(out + offs_m[:, None] * chunk + offs_s[None, :], acc, mask=(offs_m < chunk)[:, None] & (offs_s < chunk)[None, :])


@triton.jit
def _outer_kernel(
    u_ptr, v_ptr, dt_ptr, acs_ptr, seq_ptr, prev_ptr, out_ptr,
    seqlen, chunk, hdim, dstate, nchunks, heads_per_group, lpad,
    s_ub, s_ul, s_uh, s_up,
    s_vb, s_vl, s_vg, s_vn,
    ENTER: tl.constexpr, HAS_SEQ: tl.constexpr,
    BP: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, IEEE: tl.constexpr,
):
    """out[b, c, h] (hdim x dstate, fp32) = sum_s w_s u_s v_s^T over the chunk.
    State mode: u = x, v = B, w_s = dt_s exp(a_end - a_s), only s in the chunk end's document.
    Enter mode (backward): u = dy, v = C, w_t = exp(a_t), only t in the entering state's document."""
    pid = tl.program_id(0)
    n_n = tl.cdiv(dstate, BN)
    pid_p, pid_n = pid // n_n, pid % n_n
    pid_bc, h = tl.program_id(1), tl.program_id(2)
    nheads = tl.num_programs(2)
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    g = h // heads_per_group
    t0 = c * chunk
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = pid_n * BN + tl.arange(0, BN)
    ok_p, ok_n = offs_p < hdim, offs_n < dstate
    row = (bi * nheads + h) * lpad + t0  # into the (b, h, lpad) decay / dt tables
    if ENTER:
        if HAS_SEQ:
            doc = tl.load(prev_ptr + bi * nchunks + c)
    else:
        a_end = tl.load(acs_ptr + row + chunk - 1)
        if HAS_SEQ:
            doc = tl.load(seq_ptr + bi * lpad + t0 + chunk - 1)
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    for s0 in range(0, chunk, BS):
        offs_s = s0 + tl.arange(0, BS)
        in_chunk = offs_s < chunk
        ok_s = in_chunk & (t0 + offs_s < seqlen)
        a_s = tl.load(acs_ptr + row + offs_s, mask=in_chunk, other=0.0)
        if ENTER:
            w = tl.exp(tl.minimum(a_s, 0.0))
        else:
            dt_s = tl.load(dt_ptr + row + offs_s, mask=in_chunk, other=0.0)
            w = dt_s * tl.exp(tl.minimum(a_end - a_s, 0.0))
        if HAS_SEQ:
            seq_s = tl.load(seq_ptr + bi * lpad + t0 + offs_s, mask=in_chunk, other=-1)
            w = tl.where(seq_s == doc, w, 0.0)
        w = tl.where(ok_s, w, 0.0)
        u = tl.load(u_ptr + bi * s_ub + h * s_uh + (t0 + offs_s)[None, :] * s_ul + offs_p[:, None] * s_up,
                    mask=ok_p[:, None] & ok_s[None, :], other=0.0)
        v = tl.load(v_ptr + bi * s_vb + g * s_vg + (t0 + offs_s)[:, None] * s_vl + offs_n[None, :] * s_vn,
                    mask=ok_s[:, None] & ok_n[None, :], other=0.0)
        acc += _dot((u * w[None, :]).to(v.dtype), v, IEEE)
    out = out_ptr + ((bi * nchunks + c) * nheads + h) * hdim * dstate
    tl.store(out + offs_p[:, None] * dstate + offs_n[None, :], acc, mask=ok_p[:, None] & ok_n[None, :])


@triton.jit
def _pass_kernel(
    states_ptr, starts_ptr, final_ptr, init_ptr, decay_ptr,
    dim, nchunks, nheads,
    HAS_INIT: tl.constexpr, BLOCK: tl.constexpr,
):
    """starts[c] = S0[c]; S0[c+1] = decay[c] * S0[c] + states[c]; final = S0[nchunks]. Sequential
    over chunks; parallel over (batch, head, state elements)."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    bi, h = bh // nheads, bh % nheads
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < dim
    if HAS_INIT:
        s = tl.load(init_ptr + bh * dim + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(nchunks):
        at = ((bi * nchunks + c) * nheads + h) * dim + offs
        st = tl.load(states_ptr + at, mask=ok, other=0.0)
        tl.store(starts_ptr + at, s, mask=ok)
        s = tl.load(decay_ptr + bh * nchunks + c) * s + st
    tl.store(final_ptr + bh * dim + offs, s, mask=ok)


@triton.jit
def _pass_bwd_kernel(
    grad_ptr, starts_ptr, final_ptr, dfinal_ptr, decay_ptr, dinit_ptr, dend_ptr,
    dim, nchunks, nheads,
    HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """The pass in reverse. In: grad[c] = the gradient reaching S0[c] from chunk c's outputs. Out, in
    place: grad[c] = the gradient of chunk c's own state (= G[c+1], the total gradient of S0[c+1]);
    dinit = G[0]; dend[b, h, c, block] = partial <G[c+1], decay[c] S0[c]>: the gradient that the
    chunk's total decay exp(a_end) passes to every step of the chunk."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    bi, h = bh // nheads, bh % nheads
    nblocks = tl.num_programs(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < dim
    if HAS_DFINAL:
        g = tl.load(dfinal_ptr + bh * dim + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(nchunks):
        c = nchunks - 1 - i
        at = ((bi * nchunks + c) * nheads + h) * dim + offs
        decay = tl.load(decay_ptr + bh * nchunks + c)
        s_c = tl.load(starts_ptr + at, mask=ok, other=0.0)
        tl.store(dend_ptr + (bh * nchunks + c) * nblocks + pid, decay * tl.sum(g * s_c, axis=0))
        from_outputs = tl.load(grad_ptr + at, mask=ok, other=0.0)
        tl.store(grad_ptr + at, g, mask=ok)
        g = from_outputs + decay * g
    tl.store(dinit_ptr + bh * dim + offs, g, mask=ok)


@triton.jit
def _scan_kernel(
    cb_ptr, x_ptr, dt_ptr, acs_ptr, seq_ptr, prev_ptr, c_ptr, starts_ptr, d_ptr, y_ptr,
    seqlen, chunk, hdim, dstate, nchunks, heads_per_group, lpad,
    s_xb, s_xl, s_xh, s_xp,
    s_cb, s_cl, s_cg, s_cn,
    s_yb, s_yl, s_yh, s_yp,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr,
    BM: tl.constexpr, BS: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr,
):
    """y for BM steps x BP channels of one (batch, chunk, head): the entering state's term, then the
    decay-masked CB times xdt over the steps at or before each row (never the upper triangle)."""
    pid = tl.program_id(0)
    n_p = tl.cdiv(hdim, BP)
    pid_m, pid_p = pid // n_p, pid % n_p
    pid_bc, h = tl.program_id(1), tl.program_id(2)
    nheads = tl.num_programs(2)
    ngroups = nheads // heads_per_group
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    g = h // heads_per_group
    t0 = c * chunk
    row = (bi * nheads + h) * lpad + t0
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = pid_p * BP + tl.arange(0, BP)
    in_m = offs_m < chunk
    ok_m = in_m & (t0 + offs_m < seqlen)
    ok_p = offs_p < hdim
    a_m = tl.load(acs_ptr + row + offs_m, mask=in_m, other=0.0)
    if HAS_SEQ:
        seq_m = tl.load(seq_ptr + bi * lpad + t0 + offs_m, mask=in_m, other=-1)

    # the state entering the chunk: exp(a_t) * S0 C_t
    acc = tl.zeros((BM, BP), dtype=tl.float32)
    s0_base = starts_ptr + ((bi * nchunks + c) * nheads + h) * hdim * dstate
    for k0 in range(0, dstate, BK):
        offs_k = k0 + tl.arange(0, BK)
        ok_k = offs_k < dstate
        cc = tl.load(c_ptr + bi * s_cb + g * s_cg + (t0 + offs_m)[:, None] * s_cl + offs_k[None, :] * s_cn,
                     mask=ok_m[:, None] & ok_k[None, :], other=0.0)
        s0 = tl.load(s0_base + offs_p[None, :] * dstate + offs_k[:, None], mask=ok_k[:, None] & ok_p[None, :], other=0.0)
        acc += _dot(cc, s0.to(cc.dtype), IEEE)
    enter = tl.exp(tl.minimum(a_m, 0.0))
    if HAS_SEQ:
        enter = tl.where(seq_m == tl.load(prev_ptr + bi * nchunks + c), enter, 0.0)
    acc = acc * enter[:, None]

    # inside the chunk, causal: only source blocks that start at or before this block's last row
    cb_base = cb_ptr + ((bi * nchunks + c) * ngroups + g) * chunk * chunk
    hi = tl.minimum(pid_m * BM + BM, chunk)
    for s0i in range(0, hi, BS):
        offs_s = s0i + tl.arange(0, BS)
        in_s = offs_s < chunk
        ok_s = in_s & (t0 + offs_s < seqlen)
        cb = tl.load(cb_base + offs_m[:, None] * chunk + offs_s[None, :], mask=in_m[:, None] & in_s[None, :], other=0.0)
        a_s = tl.load(acs_ptr + row + offs_s, mask=in_s, other=0.0)
        dt_s = tl.load(dt_ptr + row + offs_s, mask=in_s, other=0.0)
        keep = (offs_m[:, None] >= offs_s[None, :]) & ok_s[None, :]
        if HAS_SEQ:
            seq_s = tl.load(seq_ptr + bi * lpad + t0 + offs_s, mask=in_s, other=-2)
            keep = keep & (seq_m[:, None] == seq_s[None, :])
        w = cb * tl.exp(tl.minimum(a_m[:, None] - a_s[None, :], 0.0)) * dt_s[None, :]
        w = tl.where(keep, w, 0.0)
        xs = tl.load(x_ptr + bi * s_xb + h * s_xh + (t0 + offs_s)[:, None] * s_xl + offs_p[None, :] * s_xp,
                     mask=ok_s[:, None] & ok_p[None, :], other=0.0)
        acc += _dot(w.to(xs.dtype), xs, IEEE)

    xm = tl.load(x_ptr + bi * s_xb + h * s_xh + (t0 + offs_m)[:, None] * s_xl + offs_p[None, :] * s_xp,
                 mask=ok_m[:, None] & ok_p[None, :], other=0.0)
    if HAS_D:
        acc += tl.load(d_ptr + h).to(tl.float32) * xm.to(tl.float32)
    tl.store(y_ptr + bi * s_yb + h * s_yh + (t0 + offs_m)[:, None] * s_yl + offs_p[None, :] * s_yp,
             acc.to(y_ptr.dtype.element_ty), mask=ok_m[:, None] & ok_p[None, :])


@triton.jit
def _scan_bwd_dx_kernel(
    cb_ptr, x_ptr, dt_ptr, acs_ptr, seq_ptr, b_ptr, dstates_ptr, d_ptr, dy_ptr,
    dx_ptr, ddt_ptr, dd_ptr, dsrc_ptr,
    seqlen, chunk, hdim, dstate, nchunks, heads_per_group, lpad,
    s_xb, s_xl, s_xh, s_xp,
    s_bb, s_bl, s_bg, s_bn,
    s_dyb, s_dyl, s_dyh, s_dyp,
    s_dxb, s_dxl, s_dxh, s_dxp,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr,
    BM: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr,
):
    """For BM source steps of one (batch, chunk, head), all channels (BP >= hdim):
    dxdt_s = sum_{t>=s} CB_ts exp(a_t - a_s) dy_t + exp(a_end - a_s) dStates B_s;
    dx_s = dxdt_s dt_s + D dy_s; ddt[s] = <x_s, dxdt_s>; dd[s] = <x_s, dy_s>; and
    dsrc[s] = <xdt_s, exp(a_end - a_s) dStates B_s>, the gradient of the decay from s to the chunk end."""
    pid_m, pid_bc, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nheads = tl.num_programs(2)
    ngroups = nheads // heads_per_group
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    g = h // heads_per_group
    t0 = c * chunk
    row = (bi * nheads + h) * lpad + t0
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    in_m = offs_m < chunk
    ok_m = in_m & (t0 + offs_m < seqlen)
    ok_p = offs_p < hdim
    a_m = tl.load(acs_ptr + row + offs_m, mask=in_m, other=0.0)
    dt_m = tl.load(dt_ptr + row + offs_m, mask=in_m, other=0.0)
    if HAS_SEQ:
        seq_m = tl.load(seq_ptr + bi * lpad + t0 + offs_m, mask=in_m, other=-1)

    # through the chunk's state: exp(a_end - a_s) * B_s dStates^T
    acc = tl.zeros((BM, BP), dtype=tl.float32)
    ds_base = dstates_ptr + ((bi * nchunks + c) * nheads + h) * hdim * dstate
    for k0 in range(0, dstate, BK):
        offs_k = k0 + tl.arange(0, BK)
        ok_k = offs_k < dstate
        bb = tl.load(b_ptr + bi * s_bb + g * s_bg + (t0 + offs_m)[:, None] * s_bl + offs_k[None, :] * s_bn,
                     mask=ok_m[:, None] & ok_k[None, :], other=0.0)
        ds = tl.load(ds_base + offs_p[None, :] * dstate + offs_k[:, None], mask=ok_k[:, None] & ok_p[None, :], other=0.0)
        acc += _dot(bb, ds.to(bb.dtype), IEEE)
    w_end = tl.exp(tl.minimum(tl.load(acs_ptr + row + chunk - 1) - a_m, 0.0))
    if HAS_SEQ:
        w_end = tl.where(seq_m == tl.load(seq_ptr + bi * lpad + t0 + chunk - 1), w_end, 0.0)
    acc = acc * w_end[:, None]
    ok = ok_m[:, None] & ok_p[None, :]
    xm = tl.load(x_ptr + bi * s_xb + h * s_xh + (t0 + offs_m)[:, None] * s_xl + offs_p[None, :] * s_xp, mask=ok, other=0.0).to(tl.float32)
    tl.store(dsrc_ptr + row + offs_m, tl.sum(acc * xm, axis=1) * dt_m, mask=in_m)

    # through the outputs of later steps in the chunk: (CB o L)^T dy
    cb_base = cb_ptr + ((bi * nchunks + c) * ngroups + g) * chunk * chunk
    for t0i in range(pid_m * BM, chunk, BT):
        offs_t = t0i + tl.arange(0, BT)
        in_t = offs_t < chunk
        ok_t = in_t & (t0 + offs_t < seqlen)
        cbT = tl.load(cb_base + offs_t[None, :] * chunk + offs_m[:, None], mask=in_m[:, None] & in_t[None, :], other=0.0)
        a_t = tl.load(acs_ptr + row + offs_t, mask=in_t, other=0.0)
        keep = (offs_t[None, :] >= offs_m[:, None]) & ok_t[None, :]
        if HAS_SEQ:
            seq_t = tl.load(seq_ptr + bi * lpad + t0 + offs_t, mask=in_t, other=-2)
            keep = keep & (seq_m[:, None] == seq_t[None, :])
        wT = tl.where(keep, cbT * tl.exp(tl.minimum(a_t[None, :] - a_m[:, None], 0.0)), 0.0)
        dyt = tl.load(dy_ptr + bi * s_dyb + h * s_dyh + (t0 + offs_t)[:, None] * s_dyl + offs_p[None, :] * s_dyp,
                      mask=ok_t[:, None] & ok_p[None, :], other=0.0)
        acc += _dot(wT.to(dyt.dtype), dyt, IEEE)

    dym = tl.load(dy_ptr + bi * s_dyb + h * s_dyh + (t0 + offs_m)[:, None] * s_dyl + offs_p[None, :] * s_dyp, mask=ok, other=0.0).to(tl.float32)
    dx = acc * dt_m[:, None]
    if HAS_D:
        dx += tl.load(d_ptr + h).to(tl.float32) * dym
    tl.store(dx_ptr + bi * s_dxb + h * s_dxh + (t0 + offs_m)[:, None] * s_dxl + offs_p[None, :] * s_dxp,
             dx.to(dx_ptr.dtype.element_ty), mask=ok)
    tl.store(ddt_ptr + row + offs_m, tl.sum(acc * xm, axis=1), mask=in_m)
    tl.store(dd_ptr + row + offs_m, tl.sum(dym * xm, axis=1), mask=in_m)


@triton.jit
def _scan_bwd_dc_kernel(
    cb_ptr, x_ptr, dt_ptr, acs_ptr, seq_ptr, prev_ptr, b_ptr, c_ptr, starts_ptr, dy_ptr,
    dc_ptr, dstart_ptr, drect_ptr,
    seqlen, chunk, hdim, dstate, nchunks, heads_per_group, heads_per_split, lpad, nbatch,
    s_xb, s_xl, s_xh, s_xp,
    s_bb, s_bl, s_bg, s_bn,
    s_cb, s_cl, s_cg, s_cn,
    s_dyb, s_dyl, s_dyh, s_dyp,
    HAS_SEQ: tl.constexpr,
    BM: tl.constexpr, BS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    """dC for BM target steps of one (batch, chunk, group), summed over a split of the group's heads
    (a partial per split, summed by the caller). Per head: dC_t = sum_{s<=t} M_ts / CB_ts B_s +
    exp(a_t) dy_t^T S0, with M_ts = (dy_t . xdt_s) CB_ts exp(a_t - a_s) (the gradient of step t's
    output through its path from s).

    Also the decay gradients that involve these rows, per head, without the cancellation of a
    difference of two large sums: dstart[t] = <dy_t, exp(a_t) S0 C_t> (the entering state's decay,
    summed over t >= r by the caller), and drect[block, r] = sum over this block's rows t >= r of
    sum_{s<r} M_ts: dA_r lies on the path s -> t exactly when s < r <= t."""
    pid_m, pid_bc, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nsplit = heads_per_group // heads_per_split
    g, split = pid_gs // nsplit, pid_gs % nsplit
    ngroups = tl.num_programs(2) // nsplit
    nheads = ngroups * heads_per_group
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    t0 = c * chunk
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    in_m = offs_m < chunk
    ok_m = in_m & (t0 + offs_m < seqlen)
    ok_p, ok_n = offs_p < hdim, offs_n < dstate
    if HAS_SEQ:
        seq_m = tl.load(seq_ptr + bi * lpad + t0 + offs_m, mask=in_m, other=-1)
        same_prev = seq_m == tl.load(prev_ptr + bi * nchunks + c)
    c_rows = c_ptr + bi * s_cb + g * s_cg + (t0 + offs_m)[:, None] * s_cl + offs_n[None, :] * s_cn
    cb_base = cb_ptr + ((bi * nchunks + c) * ngroups + g) * chunk * chunk
    hi = tl.minimum(pid_m * BM + BM, chunk)
    total = tl.zeros((BM, BN), dtype=tl.float32)
    for i in range(heads_per_split):
        h = g * heads_per_group + split * heads_per_split + i
        row = (bi * nheads + h) * lpad + t0
        a_m = tl.load(acs_ptr + row + offs_m, mask=in_m, other=0.0)
        dym = tl.load(dy_ptr + bi * s_dyb + h * s_dyh + (t0 + offs_m)[:, None] * s_dyl + offs_p[None, :] * s_dyp,
                      mask=ok_m[:, None] & ok_p[None, :], other=0.0)
        s0 = tl.load(starts_ptr + ((bi * nchunks + c) * nheads + h) * hdim * dstate + offs_p[:, None] * dstate + offs_n[None, :],
                     mask=ok_p[:, None] & ok_n[None, :], other=0.0)
        enter = tl.exp(tl.minimum(a_m, 0.0))
        if HAS_SEQ:
            enter = tl.where(same_prev, enter, 0.0)
        dch = _dot(dym, s0.to(dym.dtype), IEEE) * enter[:, None]
        # C_t is re-read per head (from L2) rather than held in registers across the head loop
        cm = tl.load(c_rows, mask=ok_m[:, None] & ok_n[None, :], other=0.0).to(tl.float32)
        tl.store(dstart_ptr + row + offs_m, tl.sum(dch * cm, axis=1), mask=in_m)
        carry = tl.zeros((BM,), dtype=tl.float32)  # sum of M_ts over the source blocks already seen
        for s0i in range(0, hi, BS):
            offs_s = s0i + tl.arange(0, BS)
            in_s = offs_s < chunk
            ok_s = in_s & (t0 + offs_s < seqlen)
            xsT = tl.load(x_ptr + bi * s_xb + h * s_xh + (t0 + offs_s)[None, :] * s_xl + offs_p[:, None] * s_xp,
                          mask=ok_p[:, None] & ok_s[None, :], other=0.0)
            gts = _dot(dym, xsT.to(dym.dtype), IEEE)  # (BM, BS): dy_t . x_s
            a_s = tl.load(acs_ptr + row + offs_s, mask=in_s, other=0.0)
            dt_s = tl.load(dt_ptr + row + offs_s, mask=in_s, other=0.0)
            keep = (offs_m[:, None] >= offs_s[None, :]) & ok_s[None, :]
            if HAS_SEQ:
                seq_s = tl.load(seq_ptr + bi * lpad + t0 + offs_s, mask=in_s, other=-2)
                keep = keep & (seq_m[:, None] == seq_s[None, :])
            w = tl.where(keep, gts * tl.exp(tl.minimum(a_m[:, None] - a_s[None, :], 0.0)) * dt_s[None, :], 0.0)
            bs = tl.load(b_ptr + bi * s_bb + g * s_bg + (t0 + offs_s)[:, None] * s_bl + offs_n[None, :] * s_bn,
                         mask=ok_s[:, None] & ok_n[None, :], other=0.0)
            dch += _dot(w.to(bs.dtype), bs, IEEE)
            # M_ts; the CB tile's upper triangle is unwritten memory, hence where() not a product
            cbt = tl.load(cb_base + offs_m[:, None] * chunk + offs_s[None, :], mask=in_m[:, None] & in_s[None, :], other=0.0)
            mts = tl.where(keep, w * cbt, 0.0)
            before = tl.cumsum(mts, axis=1) - mts + carry[:, None]  # sum_{s<r} M_tr, per row t
            carry += tl.sum(mts, axis=1)
            rect = tl.sum(tl.where(offs_m[:, None] >= offs_s[None, :], before, 0.0), axis=0)
            tl.store(drect_ptr + ((pid_m * nbatch + bi) * nheads + h) * lpad + t0 + offs_s, rect, mask=in_s)
        total += dch
    out = dc_ptr + (split * nbatch + bi) * seqlen * ngroups * dstate + g * dstate
    tl.store(out + (t0 + offs_m)[:, None] * ngroups * dstate + offs_n[None, :], total, mask=ok_m[:, None] & ok_n[None, :])


@triton.jit
def _scan_bwd_db_kernel(
    x_ptr, dt_ptr, acs_ptr, seq_ptr, c_ptr, dstates_ptr, dy_ptr,
    db_ptr,
    seqlen, chunk, hdim, dstate, nchunks, heads_per_group, heads_per_split, lpad, nbatch,
    s_xb, s_xl, s_xh, s_xp,
    s_cb, s_cl, s_cg, s_cn,
    s_dyb, s_dyl, s_dyh, s_dyp,
    HAS_SEQ: tl.constexpr,
    BM: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    """dB for BM source steps of one (batch, chunk, group), summed over a split of its heads.
    Per head: dB_s = sum_{t>=s} (dy_t . xdt_s) exp(a_t - a_s) C_t + exp(a_end - a_s) dStates^T xdt_s."""
    pid_m, pid_bc, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nsplit = heads_per_group // heads_per_split
    g, split = pid_gs // nsplit, pid_gs % nsplit
    ngroups = tl.num_programs(2) // nsplit
    nheads = ngroups * heads_per_group
    bi, c = pid_bc // nchunks, pid_bc % nchunks
    t0 = c * chunk
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    in_m = offs_m < chunk
    ok_m = in_m & (t0 + offs_m < seqlen)
    ok_p, ok_n = offs_p < hdim, offs_n < dstate
    if HAS_SEQ:
        seq_m = tl.load(seq_ptr + bi * lpad + t0 + offs_m, mask=in_m, other=-1)
        same_end = seq_m == tl.load(seq_ptr + bi * lpad + t0 + chunk - 1)
    total = tl.zeros((BM, BN), dtype=tl.float32)
    for i in range(heads_per_split):
        h = g * heads_per_group + split * heads_per_split + i
        row = (bi * nheads + h) * lpad + t0
        a_m = tl.load(acs_ptr + row + offs_m, mask=in_m, other=0.0)
        dt_m = tl.load(dt_ptr + row + offs_m, mask=in_m, other=0.0)
        xm = tl.load(x_ptr + bi * s_xb + h * s_xh + (t0 + offs_m)[:, None] * s_xl + offs_p[None, :] * s_xp,
                     mask=ok_m[:, None] & ok_p[None, :], other=0.0)
        ds = tl.load(dstates_ptr + ((bi * nchunks + c) * nheads + h) * hdim * dstate + offs_p[:, None] * dstate + offs_n[None, :],
                     mask=ok_p[:, None] & ok_n[None, :], other=0.0)
        w_end = tl.exp(tl.minimum(tl.load(acs_ptr + row + chunk - 1) - a_m, 0.0))
        if HAS_SEQ:
            w_end = tl.where(same_end, w_end, 0.0)
        dbh = _dot(xm, ds.to(xm.dtype), IEEE) * w_end[:, None]
        for t0i in range(pid_m * BM, chunk, BT):
            offs_t = t0i + tl.arange(0, BT)
            in_t = offs_t < chunk
            ok_t = in_t & (t0 + offs_t < seqlen)
            dytT = tl.load(dy_ptr + bi * s_dyb + h * s_dyh + (t0 + offs_t)[None, :] * s_dyl + offs_p[:, None] * s_dyp,
                           mask=ok_p[:, None] & ok_t[None, :], other=0.0)
            gst = _dot(xm, dytT.to(xm.dtype), IEEE)  # (BM, BT): x_s . dy_t
            a_t = tl.load(acs_ptr + row + offs_t, mask=in_t, other=0.0)
            keep = (offs_t[None, :] >= offs_m[:, None]) & ok_t[None, :]
            if HAS_SEQ:
                seq_t = tl.load(seq_ptr + bi * lpad + t0 + offs_t, mask=in_t, other=-2)
                keep = keep & (seq_m[:, None] == seq_t[None, :])
            w = tl.where(keep, gst * tl.exp(tl.minimum(a_t[None, :] - a_m[:, None], 0.0)), 0.0)
            ct = tl.load(c_ptr + bi * s_cb + g * s_cg + (t0 + offs_t)[:, None] * s_cl + offs_n[None, :] * s_cn,
                         mask=ok_t[:, None] & ok_n[None, :], other=0.0)
            dbh += _dot(w.to(ct.dtype), ct, IEEE)
        total += dbh * dt_m[:, None]
    out = db_ptr + (split * nbatch + bi) * seqlen * ngroups * dstate + g * dstate
    tl.store(out + (t0 + offs_m)[:, None] * ngroups * dstate + offs_n[None, :], total, mask=ok_m[:, None] & ok_n[None, :])


# ---------------------------------------------------------------------------------------------------
# launchers


def _p2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


class _Prep:
    """What every kernel of one call shares: shapes, the padded decay tables, the document tables."""

    def __init__(self, x, dt, A, B, C, seq_idx, chunk):
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        self.b, self.l, self.h, self.p, self.g, self.n, self.chunk = b, l, h, p, g, n, chunk
        self.nchunks = triton.cdiv(l, chunk)
        self.lpad = self.nchunks * chunk
        self.hpg = h // g
        self.ieee = x.dtype == torch.float32
        pad = self.lpad - l
        # (b, h, lpad) fp32: dt, and a = cumsum of dt * A within each chunk (dt = 0 on padding)
        dtp = torch.nn.functional.pad(dt.float().transpose(1, 2), (0, pad))
        self.dt = dtp.contiguous()
        self.acs = (dtp * A.float()[None, :, None]).view(b, h, self.nchunks, chunk).cumsum(-1).view(b, h, self.lpad)
        self.acs = self.acs.contiguous()
        dummy_i = torch.zeros(1, dtype=torch.int32, device=x.device)
        if seq_idx is not None:
            seq = seq_idx.to(torch.int32)
            if pad:
                seq = torch.cat([seq, seq[:, -1:].expand(-1, pad)], dim=1)
            self.seq = seq.contiguous()
            # the document of the state entering each chunk: the previous chunk's last step (the
            # first step's own document for chunk 0, so an initial state carries into it)
            ends = self.seq[:, chunk - 1 :: chunk]
            self.prev = torch.cat([self.seq[:, :1], ends[:, :-1]], dim=1).contiguous()
            keep = (ends == self.prev).float()  # (b, nchunks)
        else:
            self.seq = self.prev = dummy_i
            keep = None
        decay = torch.exp(self.acs[:, :, chunk - 1 :: chunk])  # (b, h, nchunks)
        if keep is not None:
            decay = decay * keep[:, None, :]
        self.decay = decay.contiguous()
        self.has_seq = seq_idx is not None


def _cb(prep, B, C):
    out = torch.empty(prep.b, prep.nchunks, prep.g, prep.chunk, prep.chunk, device=C.device, dtype=torch.float32)
    bm = bs = min(64, _p2(prep.chunk))
    grid = (triton.cdiv(prep.chunk, bm) * triton.cdiv(prep.chunk, bs), prep.b * prep.nchunks, prep.g)
    _cb_kernel[grid](
        C, B, out, prep.l, prep.chunk, prep.n, prep.nchunks, *C.stride(), *B.stride(),
        BM=bm, BS=bs, BK=min(64, _p2(prep.n)), IEEE=prep.ieee, num_warps=4,
    )
    return out


def _outer(prep, u, v, enter: bool):
    out = torch.empty(prep.b, prep.nchunks, prep.h, prep.p, prep.n, device=u.device, dtype=torch.float32)
    bp, bn = min(64, _p2(prep.p)), min(64, _p2(prep.n))
    grid = (triton.cdiv(prep.p, bp) * triton.cdiv(prep.n, bn), prep.b * prep.nchunks, prep.h)
    _outer_kernel[grid](
        u, v, prep.dt, prep.acs, prep.seq, prep.prev, out,
        prep.l, prep.chunk, prep.p, prep.n, prep.nchunks, prep.hpg, prep.lpad,
        *u.stride(), *v.stride(),
        ENTER=enter, HAS_SEQ=prep.has_seq, BP=bp, BN=bn, BS=min(64, _p2(prep.chunk)), IEEE=prep.ieee, num_warps=4,
    )
    return out


def _pass(prep, states, initial_state):
    starts = torch.empty_like(states)
    final = torch.empty(prep.b, prep.h, prep.p, prep.n, device=states.device, dtype=torch.float32)
    dim = prep.p * prep.n
    block = min(1024, _p2(dim))
    init = initial_state.float().contiguous() if initial_state is not None else final
    _pass_kernel[(triton.cdiv(dim, block), prep.b * prep.h)](
        states, starts, final, init, prep.decay, dim, prep.nchunks, prep.h,
        HAS_INIT=initial_state is not None, BLOCK=block, num_warps=4,
    )
    return starts, final


def _forward_states(prep, x, B, C, initial_state):
    cb = _cb(prep, B, C)
    states = _outer(prep, x, B, enter=False)
    starts, final = _pass(prep, states, initial_state)
    return cb, starts, final


def ssd_forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size):
    """(y in x's dtype, final state in fp32); shapes as ``ssd_scan_ref``."""
    B, C = B.to(x.dtype), C.to(x.dtype)
    prep = _Prep(x, dt, A, B, C, seq_idx, chunk_size)
    cb, starts, final = _forward_states(prep, x, B, C, initial_state)
    y = torch.empty(prep.b, prep.l, prep.h, prep.p, device=x.device, dtype=x.dtype)
    bm = min(64, _p2(prep.chunk))
    bp = min(64, _p2(prep.p))
    grid = (triton.cdiv(prep.chunk, bm) * triton.cdiv(prep.p, bp), prep.b * prep.nchunks, prep.h)
    _scan_kernel[grid](
        cb, x, prep.dt, prep.acs, prep.seq, prep.prev, C, starts, D if D is not None else prep.dt, y,
        prep.l, prep.chunk, prep.p, prep.n, prep.nchunks, prep.hpg, prep.lpad,
        *x.stride(), *C.stride(), *y.stride(),
        HAS_SEQ=prep.has_seq, HAS_D=D is not None,
        BM=bm, BS=bm, BP=bp, BK=min(64, _p2(prep.n)), IEEE=prep.ieee, num_warps=4,
    )
    return y, final


def _heads_per_split(hpg: int) -> int:
    # more splits: more programs in flight; fewer: a smaller partial-sum buffer. 8 heads per program
    # gives (b * chunks * Q/64 * groups * heads/8) programs: thousands at the paper's shapes
    for k in (8, 4, 2, 1):
        if hpg % k == 0:
            return k
    return 1


def ssd_backward(dy, dfinal, x, dt, A, B, C, D, initial_state, seq_idx, chunk_size):
    """Gradients (dx, ddt, dA, dB, dC, dD or None, d initial_state or None) of ``ssd_forward``."""
    in_dtypes = (B.dtype, C.dtype)
    B, C = B.to(x.dtype), C.to(x.dtype)
    dy = dy.to(x.dtype)
    prep = _Prep(x, dt, A, B, C, seq_idx, chunk_size)
    # recompute the forward's chunk quantities (cheaper than keeping (b, chunks, h, p, n) per layer)
    cb, starts, final = _forward_states(prep, x, B, C, initial_state)
    states_grad = _outer(prep, dy, C, enter=True)  # gradient reaching each S0 from its chunk's outputs

    dim = prep.p * prep.n
    block = min(1024, _p2(dim))
    nblocks = triton.cdiv(dim, block)
    dinit = torch.empty(prep.b, prep.h, prep.p, prep.n, device=x.device, dtype=torch.float32)
    dend = torch.empty(prep.b, prep.h, prep.nchunks, nblocks, device=x.device, dtype=torch.float32)
    has_dfinal = dfinal is not None
    _pass_bwd_kernel[(nblocks, prep.b * prep.h)](
        states_grad, starts, final, dfinal.float().contiguous() if has_dfinal else final, prep.decay, dinit, dend,
        dim, prep.nchunks, prep.h, HAS_DFINAL=has_dfinal, BLOCK=block, num_warps=4,
    )
    dstates = states_grad  # now: the gradient of each chunk's own state

    bp, bn = _p2(prep.p), _p2(prep.n)
    bm = min(64, _p2(prep.chunk))
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    ddt_direct = torch.zeros(prep.b, prep.h, prep.lpad, device=x.device, dtype=torch.float32)
    dd_part = torch.zeros_like(ddt_direct)
    dsrc = torch.zeros_like(ddt_direct)
    grid = (triton.cdiv(prep.chunk, bm), prep.b * prep.nchunks, prep.h)
    _scan_bwd_dx_kernel[grid](
        cb, x, prep.dt, prep.acs, prep.seq, B, dstates, D if D is not None else prep.dt, dy,
        dx, ddt_direct, dd_part, dsrc,
        prep.l, prep.chunk, prep.p, prep.n, prep.nchunks, prep.hpg, prep.lpad,
        *x.stride(), *B.stride(), *dy.stride(), *dx.stride(),
        HAS_SEQ=prep.has_seq, HAS_D=D is not None,
        BM=bm, BT=bm, BP=bp, BK=min(64, bn), IEEE=prep.ieee, num_warps=4,
    )

    hps = _heads_per_split(prep.hpg)
    nsplit = prep.hpg // hps
    nblk = triton.cdiv(prep.chunk, bm)
    dstart = torch.zeros(prep.b, prep.h, prep.lpad, device=x.device, dtype=torch.float32)
    drect = torch.zeros(nblk, prep.b, prep.h, prep.lpad, device=x.device, dtype=torch.float32)
    dc_part = torch.empty(nsplit, prep.b, prep.l, prep.g, prep.n, device=x.device, dtype=torch.float32)
    db_part = torch.empty_like(dc_part)
    grid = (nblk, prep.b * prep.nchunks, prep.g * nsplit)
    warps = 8 if bn * bm >= 128 * 64 else 4
    _scan_bwd_dc_kernel[grid](
        cb, x, prep.dt, prep.acs, prep.seq, prep.prev, B, C, starts, dy, dc_part, dstart, drect,
        prep.l, prep.chunk, prep.p, prep.n, prep.nchunks, prep.hpg, hps, prep.lpad, prep.b,
        *x.stride(), *B.stride(), *C.stride(), *dy.stride(),
        HAS_SEQ=prep.has_seq, BM=bm, BS=bm, BP=bp, BN=bn, IEEE=prep.ieee, num_warps=warps,
    )
    _scan_bwd_db_kernel[grid](
        x, prep.dt, prep.acs, prep.seq, C, dstates, dy, db_part,
        prep.l, prep.chunk, prep.p, prep.n, prep.nchunks, prep.hpg, hps, prep.lpad, prep.b,
        *x.stride(), *C.stride(), *dy.stride(),
        HAS_SEQ=prep.has_seq, BM=bm, BT=bm, BP=bp, BN=bn, IEEE=prep.ieee, num_warps=warps,
    )

    # the gradient of each step's log-decay dA_r = dt_r A (a sum of positive-weight paths, never a
    # difference of two large sums, which bf16 operands would swamp): the entering state's decay
    # reaches every output t >= r; the decay to the chunk end, every source s < r; the chunk's total
    # decay, every r; in-chunk paths s -> t with s < r <= t (summed by the dC kernel)
    shape = (prep.b, prep.h, prep.nchunks, prep.chunk)
    start_part = dstart.view(shape).flip(-1).cumsum(-1).flip(-1)
    src = dsrc.view(shape)
    src_part = src.cumsum(-1) - src
    dda = start_part + src_part + drect.sum(0).view(shape) + dend.sum(-1)[..., None]
    dda = dda.reshape(prep.b, prep.h, prep.lpad)
    ddt = (ddt_direct + dda * A.float()[None, :, None])[:, :, : prep.l].transpose(1, 2).contiguous()
    dA = (dda * prep.dt).sum((0, 2))
    dD = dd_part.sum((0, 2)) if D is not None else None
    dB = db_part.sum(0).to(in_dtypes[0])
    dC = dc_part.sum(0).to(in_dtypes[1])
    return dx, ddt.to(dt.dtype), dA.to(A.dtype), dB, dC, (dD.to(D.dtype) if D is not None else None), (
        dinit.to(initial_state.dtype) if initial_state is not None else None
    )


# ---------------------------------------------------------------------------------------------------
# the op: a torch custom op, so torch.compile treats the kernels as one opaque call with its own
# backward, instead of tracing into the launchers


@torch.library.custom_op("ablate::ssd_chunk_scan", mutates_args=())
def _ssd_op(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, initial_state: torch.Tensor | None, seq_idx: torch.Tensor | None, chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return ssd_forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size)


@_ssd_op.register_fake
def _(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size):
    b, l, h, p = x.shape
    return x.new_empty(b, l, h, p), x.new_empty(b, h, p, B.shape[-1], dtype=torch.float32)


@torch.library.custom_op("ablate::ssd_chunk_scan_bwd", mutates_args=())
def _ssd_bwd_op(
    dy: torch.Tensor, dfinal: torch.Tensor | None, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None, initial_state: torch.Tensor | None, seq_idx: torch.Tensor | None, chunk_size: int,
) -> list[torch.Tensor]:
    grads = ssd_backward(dy, dfinal, x, dt, A, B, C, D, initial_state, seq_idx, chunk_size)
    # a custom op returns tensors only: an empty tensor stands for "no gradient"
    return [g if g is not None else x.new_empty(0) for g in grads]


@_ssd_bwd_op.register_fake
def _(dy, dfinal, x, dt, A, B, C, D, initial_state, seq_idx, chunk_size):
    def like(t):  # the real op returns contiguous tensors
        return t.new_empty(t.shape) if t is not None else x.new_empty(0)

    return [like(x), like(dt), like(A), like(B), like(C), like(D), like(initial_state)]


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, initial_state, seq_idx, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, initial_state, seq_idx)
    ctx.chunk_size = chunk_size


def _backward(ctx, dy, dfinal):
    x, dt, A, B, C, D, initial_state, seq_idx = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD, dinit = _ssd_bwd_op(dy, dfinal, x, dt, A, B, C, D, initial_state, seq_idx, ctx.chunk_size)
    return dx, ddt, dA, dB, dC, (dD if D is not None else None), (dinit if initial_state is not None else None), None, None


_ssd_op.register_autograd(_backward, setup_context=_setup_context)


def ssd_scan_triton(x, dt, A, B, C, D=None, initial_state=None, chunk_size=64, seq_idx=None):
    """The ``ssd`` op's Triton fast path: same contract as ``ssd_scan_ref``."""
    return tuple(_ssd_op(x, dt, A, B, C, D, initial_state, seq_idx, int(chunk_size)))


def available(x, *args) -> bool:
    """CUDA tensors, or CPU tensors under the Triton interpreter when a test asks for it
    (ABLATE_TRITON_ON_CPU=1 with TRITON_INTERPRET=1)."""
    if x.is_cuda:
        return x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return interpreting_on_cpu()
