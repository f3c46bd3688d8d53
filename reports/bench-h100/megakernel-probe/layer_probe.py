"""How fast could Table 1's Mamba layer decode as one persistent kernel? A feasibility probe.

The 50% goal allows Table 1's Mamba step 0.416 ms at batch 128: after the LM head and the greedy
pick (about 30 µs), 16 µs per layer. Our step runs each layer as six kernels in 36 µs. This script
times the layer as one launch of 128 programs (one per SM) that move exactly the layer's bytes
(its weights, the conv and SSM state read and written) and do its matmuls with the decode shapes,
with two grid-wide barriers where the data flow needs them:

  A  each program owns 16 of the 2048 inner channels: RMSNorm(h) @ W_in for its x and z columns
     (every program reads all of h from L2), the conv step of its channels, its split-K share of
     x_proj atomically added into dt|B|C; it also copies its share of h into the next residual
  -- barrier: dt|B|C complete --
  C  dt/B/C norms, dt_proj for its channels, the selective state update of its (128 x 16 x 16)
     state, gate; y written for its channels
  -- barrier: y complete --
  D  out_proj as a 16 x 8 split (K x N) of 128 x 128 tiles, atomically added into the residual

The arithmetic is the layer's, but the script does not check it against the model: it answers only
whether such a kernel could run the layer in the time the goal allows. Variants: without the
barriers (a lower bound on what they cost) and with the residual stream read as bf16 instead of
fp32 (the L2 traffic of phase A halved). Also timed: one kernel that only copies the layer's bytes.

Run on the device, from the repository root: ``PYTHONPATH=. python3 reports/bench-h100/megakernel-probe/layer_probe.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.bench.fastpaths import time_ms

BATCH, HIDDEN, INNER, STATE, RANK, TAPS = 128, 1024, 2048, 16, 64, 3  # TAPS: conv kernel 4 minus one
CH = 16  # inner channels per program
PROGRAMS = INNER // CH  # 128
DBC = 128  # dt (64) | B (16) | C (16), padded to a power of two
LAYERS = 24
TARGET_US = 16.1


@triton.jit
def _barrier(bar_ptr, target, ENABLED: tl.constexpr):
    if ENABLED:
        tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def _mamba_layer(
    h_ptr, next_ptr, w_in_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, w_x_ptr, dbc_ptr,
    w_dt_ptr, dt_b_ptr, a_ptr, d_ptr, state_ptr, uz_ptr, y_ptr, w_out_ptr, bar_ptr, part_ptr,
    B: tl.constexpr, H: tl.constexpr, I: tl.constexpr, N: tl.constexpr, R: tl.constexpr,
    TAPS: tl.constexpr, CH: tl.constexpr, DBC: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
    P: tl.constexpr, BARRIERS: tl.constexpr, PHASES: tl.constexpr = 3, TWO_LEVEL: tl.constexpr = False,
):
    p = tl.program_id(0)
    rows = tl.arange(0, B)
    ch = p * CH + tl.arange(0, CH)
    # A: in_proj for this program's x and z columns (W_in stored per program, (P, H, 2 CH))
    acc_x = tl.zeros((B, CH), tl.float32)
    acc_z = tl.zeros((B, CH), tl.float32)
    ss = tl.zeros((B,), tl.float32)
    ks = tl.arange(0, BK)
    cols = tl.arange(0, CH)
    for k in range(0, H, BK):
        hk = tl.load(h_ptr + rows[:, None] * H + (k + ks)[None, :]).to(tl.float32)
        ss += tl.sum(hk * hk, axis=1)
        nw = tl.load(norm_w_ptr + k + ks).to(tl.float32)
        hb = (hk * nw[None, :]).to(tl.bfloat16)
        wbase = w_in_ptr + p * H * 2 * CH + (k + ks)[:, None] * 2 * CH
        acc_x += tl.dot(hb, tl.load(wbase + cols[None, :]))
        acc_z += tl.dot(hb, tl.load(wbase + CH + cols[None, :]))
    scale = tl.rsqrt(ss / H + 1e-5)
    x = acc_x * scale[:, None]
    z = acc_z * scale[:, None]
    # the residual for the next layer: this program's share of h's columns
    hc = p * (H // P) + tl.arange(0, H // P)
    tl.store(next_ptr + rows[:, None] * H + hc[None, :], tl.load(h_ptr + rows[:, None] * H + hc[None, :]).to(tl.float32))
    # conv step over the tap-major state (TAPS, B, I)
    u = x * tl.load(conv_w_ptr + ch * (TAPS + 1) + TAPS).to(tl.float32)[None, :] + tl.load(conv_b_ptr + ch).to(tl.float32)[None, :]
    prev = x
    for t in tl.static_range(TAPS):
        idx = conv_ptr + t * B * I + rows[:, None] * I + ch[None, :]
        s = tl.load(idx).to(tl.float32)
        u += s * tl.load(conv_w_ptr + ch * (TAPS + 1) + t).to(tl.float32)[None, :]
        tl.store(idx, prev.to(tl.bfloat16))  # shifted by one (the probe does not care about tap order)
        prev = s
    u = u * tl.sigmoid(u)
    # u and z wait in L2 for phase C, which takes them a chunk of rows at a time
    tl.store(uz_ptr + rows[:, None] * 2 * I + ch[None, :], u.to(tl.bfloat16))
    tl.store(uz_ptr + rows[:, None] * 2 * I + I + ch[None, :], z.to(tl.bfloat16))
    # x_proj, this program's split-K share, into dt|B|C
    dcols = tl.arange(0, DBC)
    part = tl.dot(u.to(tl.bfloat16), tl.load(w_x_ptr + ch[:, None] * DBC + dcols[None, :]))
    if TWO_LEVEL:  # partials to memory, then program p sums row p over them: no contended atomics
        tl.store(part_ptr + p * B * DBC + rows[:, None] * DBC + dcols[None, :], part)
        _barrier(bar_ptr, P, BARRIERS)
        progs = tl.arange(0, P)
        row = tl.sum(tl.load(part_ptr + progs[:, None] * B * DBC + p * DBC + dcols[None, :], cache_modifier=".cg"), axis=0)
        tl.store(dbc_ptr + p * DBC + dcols, row)
        _barrier(bar_ptr, 2 * P, BARRIERS)
    else:  # every program adds its 128 x 128 share into the same addresses
        tl.atomic_add(dbc_ptr + rows[:, None] * DBC + dcols[None, :], part, sem="relaxed")
        _barrier(bar_ptr, P, BARRIERS)
    if PHASES < 2:
        return
    # C: dt/B/C norms, dt_proj, state update, in chunks of RB rows (register pressure)
    rr = tl.arange(0, RB)
    rk = tl.arange(0, R)
    nn = tl.arange(0, N)
    w_dt = tl.load(w_dt_ptr + rk[:, None] * I + ch[None, :])
    dt_b = tl.load(dt_b_ptr + ch).to(tl.float32)
    A = tl.load(a_ptr + ch[:, None] * N + nn[None, :]).to(tl.float32)
    D = tl.load(d_ptr + ch).to(tl.float32)
    for r0 in range(0, B, RB):
        r = r0 + rr
        dt_raw = tl.load(dbc_ptr + r[:, None] * DBC + rk[None, :], cache_modifier=".cg")
        dt_raw = dt_raw * tl.rsqrt(tl.sum(dt_raw * dt_raw, axis=1) / R + 1e-5)[:, None]
        Bv = tl.load(dbc_ptr + r[:, None] * DBC + R + nn[None, :], cache_modifier=".cg")
        Cv = tl.load(dbc_ptr + r[:, None] * DBC + R + N + nn[None, :], cache_modifier=".cg")
        Bv = Bv * tl.rsqrt(tl.sum(Bv * Bv, axis=1) / N + 1e-5)[:, None]
        Cv = Cv * tl.rsqrt(tl.sum(Cv * Cv, axis=1) / N + 1e-5)[:, None]
        dt = tl.dot(dt_raw.to(tl.bfloat16), w_dt) + dt_b[None, :]
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        sidx = state_ptr + r[:, None, None] * I * N + ch[None, :, None] * N + nn[None, None, :]
        st = tl.load(sidx).to(tl.float32)
        ur = tl.load(uz_ptr + r[:, None] * 2 * I + ch[None, :]).to(tl.float32)
        zr = tl.load(uz_ptr + r[:, None] * 2 * I + I + ch[None, :]).to(tl.float32)
        st = st * tl.exp(dt[:, :, None] * A[None, :, :]) + (dt * ur)[:, :, None] * Bv[:, None, :]
        tl.store(sidx, st.to(tl.bfloat16))
        yr = (tl.sum(st * Cv[:, None, :], axis=2) + D[None, :] * ur) * zr * tl.sigmoid(zr)
        tl.store(y_ptr + r[:, None] * I + ch[None, :], yr.to(tl.bfloat16))
    _barrier(bar_ptr, (3 if TWO_LEVEL else 2) * P, BARRIERS)
    if PHASES < 3:
        return
    # D: out_proj, a 16 x 8 split of (I x H) into 128 x 128 tiles, added into the residual
    kb = (p // (H // 128)) * 128 + tl.arange(0, 128)
    nb = (p % (H // 128)) * 128 + tl.arange(0, 128)
    yk = tl.load(y_ptr + rows[:, None] * I + kb[None, :], cache_modifier=".cg")
    out = tl.dot(yk, tl.load(w_out_ptr + kb[:, None] * H + nb[None, :]))
    tl.atomic_add(next_ptr + rows[:, None] * H + nb[None, :], out, sem="relaxed")


@triton.jit
def _copy_bytes(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    # a roofline: read n bf16 and write n bf16 (weights are only read, so this overstates writes)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=offs < n), mask=offs < n)


def _layer_tensors():
    d = dict(device="cuda")
    bf = torch.bfloat16
    return dict(
        w_in=torch.randn(PROGRAMS, HIDDEN, 2 * CH, dtype=bf, **d) * 0.03,
        norm_w=torch.ones(HIDDEN, dtype=bf, **d),
        conv_w=torch.randn(INNER, TAPS + 1, dtype=bf, **d) * 0.3,
        conv_b=torch.zeros(INNER, dtype=bf, **d),
        conv=torch.randn(TAPS, BATCH, INNER, dtype=bf, **d),
        w_x=torch.randn(INNER, DBC, dtype=bf, **d) * 0.02,
        w_dt=torch.randn(RANK, INNER, dtype=bf, **d) * 0.1,
        dt_b=torch.zeros(INNER, dtype=bf, **d),
        a=-torch.rand(INNER, STATE, **d),
        dd=torch.ones(INNER, dtype=bf, **d),
        state=torch.randn(BATCH, INNER, STATE, dtype=bf, **d),
        w_out=torch.randn(INNER, HIDDEN, dtype=bf, **d) * 0.02,
    )


def _median_us(graph, reps=200):
    return time_ms(graph.replay, warmup=20, rep=reps) * 1e3


def time_layers(barriers: bool, residual_dtype, num_warps: int, bk: int, rb: int, phases: int = 3, two_level: bool = False) -> float:
    """Median µs per layer of ``LAYERS`` launches (each layer its own weights and state), CUDA-graph replayed."""
    layers = [_layer_tensors() for _ in range(LAYERS)]
    # the residual chain is fp32 (phase D adds into it atomically); the bf16 variant reads a copy instead
    hs = [torch.randn(BATCH, HIDDEN, device="cuda") for _ in range(LAYERS + 1)]
    reads = hs if residual_dtype == torch.float32 else [h.to(residual_dtype) for h in hs]
    uz = torch.zeros(BATCH, 2 * INNER, dtype=torch.bfloat16, device="cuda")
    dbc = torch.zeros(LAYERS, BATCH, DBC, device="cuda")
    y = torch.zeros(BATCH, INNER, dtype=torch.bfloat16, device="cuda")
    bars = torch.zeros(LAYERS, dtype=torch.int32, device="cuda")
    part = torch.empty(PROGRAMS, BATCH, DBC, device="cuda")

    def step():
        bars.zero_()
        dbc.zero_()
        for i, t in enumerate(layers):
            _mamba_layer[(PROGRAMS,)](
                reads[i], hs[i + 1], t["w_in"], t["norm_w"], t["conv_w"], t["conv_b"], t["conv"], t["w_x"], dbc[i],
                t["w_dt"], t["dt_b"], t["a"], t["dd"], t["state"], uz, y, t["w_out"], bars[i], part,
                BATCH, HIDDEN, INNER, STATE, RANK, TAPS, CH, DBC, bk, rb, PROGRAMS, barriers, phases, two_level, num_warps=num_warps,
            )

    step()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return _median_us(g) / LAYERS


def time_copy() -> float:
    """µs per layer to read and write the layer's bytes once (33 MB moved) in one kernel per layer."""
    per_layer = (HIDDEN * 2 * INNER + INNER * DBC + RANK * INNER + INNER * HIDDEN) * 2 + 2 * (BATCH * INNER * (STATE + TAPS)) * 2
    n = per_layer // 4  # bf16 elements read (half of the bytes moved), as many written
    src = [torch.randn(n, dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    dst = [torch.empty_like(s) for s in src]

    def step():
        for s, d in zip(src, dst):
            _copy_bytes[(triton.cdiv(n, 8192),)](s, d, n, 8192, num_warps=8)

    step()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    us = _median_us(g) / LAYERS
    print(f"copy of the layer's {per_layer / 1e6:.1f} MB: {us:.1f} µs per layer ({per_layer / us / 1e6:.2f} TB/s)")
    return us


def check(num_warps: int = 8, two_level: bool = False) -> None:
    """One layer with its barriers against the same arithmetic in torch (fp32): do the barriers hold?"""
    t = _layer_tensors()
    h = torch.randn(BATCH, HIDDEN, device="cuda")
    nxt, dbc = torch.zeros_like(h), torch.zeros(BATCH, DBC, device="cuda")
    uz = torch.zeros(BATCH, 2 * INNER, dtype=torch.bfloat16, device="cuda")
    y = torch.zeros(BATCH, INNER, dtype=torch.bfloat16, device="cuda")
    bar = torch.zeros(1, dtype=torch.int32, device="cuda")
    st0, conv0 = t["state"].float(), t["conv"].float()
    _mamba_layer[(PROGRAMS,)](
        h, nxt, t["w_in"], t["norm_w"], t["conv_w"], t["conv_b"], t["conv"], t["w_x"], dbc, t["w_dt"], t["dt_b"],
        t["a"], t["dd"], t["state"], uz, y, t["w_out"], bar, torch.empty(PROGRAMS, BATCH, DBC, device="cuda"),
        BATCH, HIDDEN, INNER, STATE, RANK, TAPS, CH, DBC, 64, 32, PROGRAMS, True, 3, two_level, num_warps=num_warps,
    )
    torch.cuda.synchronize()

    def rms(v):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)

    def err(a, b):
        return ((a.float() - b).abs().max() / b.abs().max()).item()

    w = t["w_in"].float()
    x = torch.einsum("bh,phc->bpc", rms(h), w[:, :, :CH]).reshape(BATCH, INNER)
    z = torch.einsum("bh,phc->bpc", rms(h), w[:, :, CH:]).reshape(BATCH, INNER)
    cw = t["conv_w"].float()
    u = x * cw[:, TAPS] + sum(conv0[k] * cw[:, k] for k in range(TAPS))
    u = u * torch.sigmoid(u)
    d = u @ t["w_x"].float()
    dt = torch.nn.functional.softplus(rms(d[:, :RANK]) @ t["w_dt"].float())
    B, C = rms(d[:, RANK : RANK + STATE]), rms(d[:, RANK + STATE : RANK + 2 * STATE])
    st = st0 * torch.exp(dt[:, :, None] * t["a"][None]) + (dt * u)[:, :, None] * B[:, None, :]
    yy = ((st * C[:, None, :]).sum(-1) + u) * torch.nn.functional.silu(z)
    out = h + yy @ t["w_out"].float()
    print(
        f"check{' (two-level x_proj)' if two_level else ''}, one layer with barriers vs torch fp32 (max error / max): dt|B|C {err(dbc, d):.1e}, "
        f"state {err(t['state'], st):.1e}, y {err(y, yy):.1e}, residual out {err(nxt, out):.1e}"
    )


def main() -> None:
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; batch {BATCH}, target {TARGET_US} µs per layer")
    assert PROGRAMS <= props.multi_processor_count, "the barriers need every program resident"
    check()
    check(two_level=True)
    time_copy()
    print("| barriers | residual | warps | BK | RB | µs per layer |")
    print("|---|---|---|---|---|---|")
    for barriers, dtype, warps, bk, rb in [
        (True, torch.float32, 4, 64, 32),
        (True, torch.float32, 8, 64, 32),
        (True, torch.float32, 8, 128, 32),
        (True, torch.float32, 8, 64, 16),
        (True, torch.bfloat16, 8, 64, 32),
        (False, torch.float32, 8, 64, 32),
        (False, torch.bfloat16, 8, 64, 32),
    ]:
        try:
            us = time_layers(barriers, dtype, warps, bk, rb)
            print(f"| {barriers} | {str(dtype)[6:]} | {warps} | {bk} | {rb} | {us:.1f} |", flush=True)
        except Exception as e:  # noqa: BLE001 - a configuration that does not compile is a row, not the end
            print(f"| {barriers} | {str(dtype)[6:]} | {warps} | {bk} | {rb} | failed: {type(e).__name__}: {str(e)[:120]} |", flush=True)
    print()
    print("Phases (8 warps, BK 64, RB 32, fp32 residual): µs per layer up to the end of each")
    print("| phases run | with barriers | without |")
    print("|---|---|---|")
    for phases, name in [(1, "A"), (2, "A, C"), (3, "A, C, D")]:
        for two_level in (False, True):
            on = time_layers(True, torch.float32, 8, 64, 32, phases, two_level)
            off = time_layers(False, torch.float32, 8, 64, 32, phases, two_level)
            label = f"{name}{', x_proj two-level' if two_level else ''}"
            print(f"| {label} | {on:.1f} | {off:.1f} |", flush=True)


if __name__ == "__main__":
    main()
