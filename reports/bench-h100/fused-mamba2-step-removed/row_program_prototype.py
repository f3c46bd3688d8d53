"""Prototype (not part of the package): Mamba2's decode step between in_proj and out_proj in one
kernel, one program per sequence row, so that the row's B/C conv, its conv-state roll and the gated
norm's reduction need no other program. Three phases per program: the conv of every channel (output
to a scratch row), the state update of BLOCK_R (head, p) rows at a time, the norm.

    python3 reports/bench-h100/fused-mamba2-step-removed/row_program_prototype.py   # H100, git 681ad4e
    TRITON_INTERPRET=1 ABLATE_TRITON_ON_CPU=1 python3 <same>                          # CPU: parity only

Output: row_program_prototype-681ad4e.txt (parity: max |diff| / max |value| of output, conv state,
SSM state against the separate ops; times per layer replayed from a CUDA graph over state copies
larger than L2, "separate" with the gated norm eager, not compiled as in the model)."""
import sys

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting

patch_when_interpreting()


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _conv_window(u_ptr, s_row, w_ptr, bias_ptr, offs, m, s_k, w_c, w_k, TAPS: tl.constexpr, HAS_BIAS: tl.constexpr):
    # conv + SiLU of channels offs for one row (TAPS of 2 to 4), and the roll of their state. A
    # channel's value is held by several threads (the layout replicates it across warps), so every
    # slot is read before a barrier and written after it
    u = tl.load(u_ptr + offs, mask=m, other=0.0)
    y = u.to(tl.float32) * tl.load(w_ptr + offs * w_c + (TAPS - 1) * w_k, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs, mask=m, other=0.0).to(tl.float32)
    h0 = tl.load(s_row, mask=m, other=0.0)
    y += h0.to(tl.float32) * tl.load(w_ptr + offs * w_c, mask=m, other=0.0).to(tl.float32)
    if TAPS > 2:
        h1 = tl.load(s_row + s_k, mask=m, other=0.0)
        y += h1.to(tl.float32) * tl.load(w_ptr + offs * w_c + w_k, mask=m, other=0.0).to(tl.float32)
    if TAPS > 3:
        h2 = tl.load(s_row + 2 * s_k, mask=m, other=0.0)
        y += h2.to(tl.float32) * tl.load(w_ptr + offs * w_c + 2 * w_k, mask=m, other=0.0).to(tl.float32)
    tl.debug_barrier()
    if TAPS > 2:
        tl.store(s_row, h1, mask=m)
    if TAPS > 3:
        tl.store(s_row + s_k, h2, mask=m)
    tl.store(s_row + (TAPS - 2) * s_k, u.to(s_row.dtype.element_ty), mask=m)
    y = y * tl.sigmoid(y)
    return y.to(u.dtype).to(tl.float32)  # the reference's conv output is a tensor of the input dtype


@triton.jit
def _mamba2_step_kernel(
    in_ptr, conv_ptr, cw_ptr, cb_ptr, state_ptr, A_log_ptr, D_ptr, dt_bias_ptr, nw_ptr, y_ptr, scratch_ptr,
    eps,
    in_b, c_b, c_c, c_k, w_c, w_k, s_b, s_h, s_p, s_n, y_b, scratch_b,
    INNER: tl.constexpr, G: tl.constexpr, N: tl.constexpr, H: tl.constexpr, P: tl.constexpr, TAPS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, STAGES: tl.constexpr,
):
    b = tl.program_id(0)
    row = in_ptr + b * in_b  # (z, xBC, dt) of one row
    xbc = row + INNER
    dts = row + 2 * INNER + 2 * G * N
    conv_row = conv_ptr + b * c_b
    CONV: tl.constexpr = INNER + 2 * G * N
    # scratch of the row: [0, CONV) the conv's output x, B, C; [CONV, CONV + INNER) gated y
    scratch = scratch_ptr + b * scratch_b
    # 1. the conv over every channel, its output to scratch
    for c0 in tl.range(0, CONV, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        m = offs < CONV
        u = _conv_window(xbc, conv_row + offs * c_c, cw_ptr, cb_ptr, offs, m, c_k, w_c, w_k, TAPS, HAS_CONV_BIAS)
        tl.store(scratch + offs, u, mask=m)
    tl.debug_barrier()
    offs_n = tl.arange(0, BLOCK_N)
    mn = offs_n < N
    offs_r = tl.arange(0, BLOCK_R)
    GROUP_W: tl.constexpr = INNER // G
    for g in tl.static_range(G):
        bv = tl.load(scratch + INNER + g * N + offs_n, mask=mn, other=0.0)
        cv = tl.load(scratch + INNER + G * N + g * N + offs_n, mask=mn, other=0.0)
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        # 2. the state update of the group's heads, BLOCK_R (head, p) rows at a time
        for r0 in tl.range(g * GROUP_W, (g + 1) * GROUP_W, BLOCK_R, num_stages=STAGES):
            ch = r0 + offs_r
            h = ch // P
            p = ch % P
            x = tl.load(scratch + ch)
            dt = _softplus(tl.load(dts + h).to(tl.float32) + tl.load(dt_bias_ptr + h).to(tl.float32))
            a = -tl.exp(tl.load(A_log_ptr + h).to(tl.float32))
            s_ptrs = state_ptr + b * s_b + h[:, None] * s_h + p[:, None] * s_p + offs_n[None, :] * s_n
            s = tl.load(s_ptrs, mask=mn[None, :], other=0.0).to(tl.float32)
            s = s * tl.exp(dt * a)[:, None] + (dt * x)[:, None] * bv[None, :]
            tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=mn[None, :])
            y = tl.sum(s * cv[None, :], axis=1)
            if HAS_D:
                y += x * tl.load(D_ptr + h).to(tl.float32)
            z = tl.load(row + ch).to(tl.float32)
            y = y.to(y_ptr.dtype.element_ty).to(tl.float32) * (z * tl.sigmoid(z))
            acc += y * y
            tl.store(scratch + CONV + ch, y)
        r = tl.rsqrt(tl.sum(acc) / GROUP_W + eps)
        tl.debug_barrier()
        # 3. the group's norm
        for r0 in tl.range(g * GROUP_W, (g + 1) * GROUP_W, BLOCK_C):
            ch = r0 + tl.arange(0, BLOCK_C)
            mc = ch < (g + 1) * GROUP_W
            normed = (tl.load(scratch + CONV + ch, mask=mc) * r).to(y_ptr.dtype.element_ty)
            w = tl.load(nw_ptr + ch, mask=mc)
            tl.store(y_ptr + b * y_b + ch, (w.to(tl.float32) * normed.to(tl.float32)).to(y_ptr.dtype.element_ty), mask=mc)


def mamba2_step(zxbcdt, conv_state, conv_w, conv_b, state, A_log, D, dt_bias, norm_w, eps, groups, cfg=None):
    b = zxbcdt.shape[0]
    _, heads, p, n = state.shape
    inner = heads * p
    y = torch.empty(b, inner, dtype=zxbcdt.dtype, device=zxbcdt.device)
    scratch = torch.empty(b, 2 * inner + 2 * groups * n, dtype=torch.float32, device=zxbcdt.device)
    block_r, warps, stages = cfg or (32, 4, 2)
    _mamba2_step_kernel[(b,)](
        zxbcdt, conv_state, conv_w, conv_b if conv_b is not None else conv_w, state, A_log,
        D if D is not None else A_log, dt_bias, norm_w, y, scratch, eps,
        zxbcdt.stride(0), *conv_state.stride(), *conv_w.stride(), *state.stride(), y.stride(0), scratch.stride(0),
        INNER=inner, G=groups, N=n, H=heads, P=p, TAPS=conv_w.shape[1], HAS_CONV_BIAS=conv_b is not None, HAS_D=D is not None,
        BLOCK_C=min(1024, triton.next_power_of_2(inner)), BLOCK_N=triton.next_power_of_2(n), BLOCK_R=block_r, STAGES=stages,
        num_warps=warps,
    )
    return y


def reference(zxbcdt, conv_state, conv_w, conv_b, state, A_log, D, dt_bias, norm_w, eps, groups, backend="reference"):
    from ablate.model.decode import conv_step, ssd_state_update
    from ablate.model.ssm import gated_group_rms_norm

    b = zxbcdt.shape[0]
    _, heads, p, n = state.shape
    inner = heads * p
    z, xbc, dt = torch.split(zxbcdt, [inner, inner + 2 * groups * n, heads], dim=-1)
    xbc = conv_step(xbc, conv_state, conv_w, conv_b, backend=backend)
    x, B, C = torch.split(xbc, [inner, groups * n, groups * n], dim=-1)
    y = ssd_state_update(state, x.reshape(b, heads, p), dt, A_log, B.reshape(b, groups, n), C.reshape(b, groups, n), D, dt_bias, True, backend=backend)
    fn = gated_group_rms_norm if backend != "reference" else gated_group_rms_norm.reference
    return fn(y.reshape(b, inner), z, norm_w, groups, eps)


def inputs(b, heads, p, n, groups, taps, device, dtype):
    inner = heads * p
    ch = inner + 2 * groups * n
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)
    zxbcdt = r(b, inner + ch + heads)
    conv_state = r(b, taps - 1, ch).transpose(1, 2)
    conv_w, conv_b = r(ch, taps, scale=0.5), r(ch, scale=0.1)
    state = r(b, heads, p, n)
    A_log = torch.log(torch.linspace(1, 16, heads)).to(device=device, dtype=dtype)
    D, dt_bias = r(heads), r(heads, scale=0.5) - 2
    norm_w = 1 + r(inner, scale=0.1)
    return [zxbcdt, conv_state, conv_w, conv_b, state, A_log, D, dt_bias, norm_w, 1e-5, groups]


def clone(args):
    return [a.clone() if torch.is_tensor(a) else a for a in args]


def parity(b, heads, p, n, groups, taps, device, dtype, cfg=None):
    args = inputs(b, heads, p, n, groups, taps, device, dtype)
    ra, fa = clone(args), clone(args)
    yr = reference(*ra).float()
    yf = mamba2_step(*fa, cfg=cfg).float()
    out = []
    for x, y in ((yr, yf), (ra[1].float(), fa[1].float()), (ra[4].float(), fa[4].float())):
        out.append(((x - y).abs().max() / x.abs().max()).item())
    return out


def time_layers(fn, args, idx=(1, 4), l2=50 * 2**20):
    from triton.testing import do_bench_cudagraph

    per = sum(args[i].numel() * args[i].element_size() for i in idx)
    copies = max(2, -(-2 * l2 // per))
    calls = [[a.clone() if i in idx else a for i, a in enumerate(args)] for _ in range(copies)]

    def step():
        for c in calls:
            fn(*c)

    return float(do_bench_cudagraph(step, rep=100, return_mode="median")) / copies * 1e3


if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        for shape in [(3, 4, 8, 16, 1, 4), (2, 4, 8, 16, 2, 4), (2, 6, 16, 8, 1, 3)]:
            for dt in (torch.float32, torch.bfloat16):
                print(shape, dt, parity(*shape, dev, dt, cfg=(16, 4, 1)))
        sys.exit()
    bf = torch.bfloat16
    shape = (128, 64, 64, 128, 1, 4)
    print("parity bf16", parity(*shape, dev, bf))
    print("parity fp32", parity(*shape, dev, torch.float32))
    args = inputs(*shape, dev, bf)
    from ablate.model import elementwise  # noqa: F401
    sep = time_layers(lambda *a: reference(*a, backend="triton"), args)
    print(f"separate (triton conv, ssd, compiled norm): {sep:.1f} us")
    from ablate.model.decode import ssd_state_update
    b, H, P, N, G, _ = shape
    sargs = [args[4], torch.randn(b, H, P, device=dev, dtype=bf), torch.randn(b, H, device=dev, dtype=bf), args[5],
             torch.randn(b, G, N, device=dev, dtype=bf), torch.randn(b, G, N, device=dev, dtype=bf), args[6], args[7], True]
    print(f"ssd update alone: {time_layers(lambda *a: ssd_state_update(*a, backend='triton'), sargs, idx=(0,)):.1f} us")
    for cfg in [(32, 4, 1), (32, 4, 3), (64, 4, 1), (64, 4, 3), (64, 8, 3), (128, 8, 1), (128, 8, 2), (128, 8, 3), (128, 16, 2), (256, 16, 1), (256, 16, 2), (256, 32, 1), (512, 32, 1)]:
        try:
            t = time_layers(lambda *a: mamba2_step(*a, cfg=cfg), args)
            print(cfg, f"{t:.1f} us", parity(*shape, dev, bf, cfg=cfg))
        except Exception as e:
            print(cfg, "failed", type(e).__name__, str(e)[:200])
