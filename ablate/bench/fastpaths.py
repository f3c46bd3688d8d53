"""GPU check of the attention and SSD fast paths at the shapes the Table 3 models run, in one command:

    python -m ablate.bench.fastpaths --out DIR

Complements ``ablate.bench.kernels`` (every op at the anchor shapes) with what only these paths need:

- parity on the GPU, forward and every input gradient against the reference in float64, bf16 and
  fp32, NaN-poisoned memory (an element a kernel fails to write shows up): FlexAttention and SDPA
  with GQA and value heads wider than the keys (Hymba: Q/K 64, V 128), sliding window + meta tokens
  + key padding, and a non-aligned prefill over a ring-buffer cache; the Triton SSD at the Mamba2
  layer shape (64-wide heads, state 128, one B/C group, chunk 256) at an odd length, with an initial
  state and packed documents;
- timings (CUDA events, median of 20 after 5 warm-ups): FlexAttention SWA 1024 + 128 meta at the
  anchor shape (B=4 H=16 L=8192 D=64: 0.60 / 2.65 ms fwd / fwd+bwd), the Hymba-1B attention (24
  heads over 4 KV heads, 64/128) with FlexAttention and with SDPA, SDPA causal at the Llama-1B shape
  with K/V heads repeated vs ``enable_gqa``, and the Triton SSD against the chunked torch reference
  at the Mamba2-1B layer shape and at the fla-core anchor shape.

Prints a compact table last; writes DIR/fastpaths.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

PEAK_FLOPS, HBM = 772e12, 3.0e12

# (label, mask kind, b, hq, hkv, lq, lk, d, dv, window, meta): odd lengths, off the 128-blocks
ATTENTION_PARITY = [
    ("swa+meta+padding, GQA 6:1, d64/v128", "padding", 2, 12, 2, 1037, 1037, 64, 128, 256, 32),
    ("cache prefill (ring buffer), GQA 4:1", "cache", 2, 8, 2, 300, 1111, 64, 64, 256, 16),
    ("prefill over 128 meta tokens + SWA 256, GQA 6:1, d64/v128", "cache", 2, 12, 2, 600, 728, 64, 128, 256, 128),
    ("packed documents + meta + SWA 256 (training), GQA 4:1", "documents", 2, 8, 2, 1037, 1037, 64, 64, 256, 16),
]
# label -> (b, l, h, p, g, n, chunk, initial state, documents): lengths off the chunk
SSD_PARITY = {
    "Mamba2 layer shape, state + documents": (2, 1037, 8, 64, 1, 128, 256, True, True),
    "2 groups, chunk 64, no state": (2, 777, 8, 64, 2, 64, 64, False, False),
}
SSD_BENCH = [
    ("Mamba2-1B layer: B2 L8192 H64 P64 N128 G1 Q256", (2, 8192, 64, 64, 1, 128, 256), None),
    ("fla anchor shape: B4 T8192 H32 V64 K128 G32 Q64", (4, 8192, 32, 64, 32, 128, 64), "0.86 fwd (fla chunk_simple_gla)"),
]
BENCH_L = 8192


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _poison(device):
    """Fill the caching allocator's free memory with NaN so that an output element a kernel never
    writes reads as NaN (the next allocations reuse these blocks)."""
    free, _ = torch.cuda.mem_get_info(device)
    n = int(min(free * 0.5, 8 * 2**30)) // 4
    torch.full((n,), float("nan"), device=device)
    torch.cuda.synchronize(device)


def time_ms(fn, warmup=5, rep=20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------
# attention


def _spec(kind, b, lq, lk, window, meta, device):
    from ablate.kernels import MaskSpec

    g = torch.Generator(device="cpu").manual_seed(1)
    if kind == "cache":  # queries at the end of a ring buffer: keys out of order, some slots empty
        total = lk + 9
        k_pos = torch.stack([torch.randperm(total, generator=g)[:lk] for _ in range(b)])
        k_pos[:, :meta] = torch.arange(meta)
        q_pos = torch.arange(total - lq, total)[None].expand(b, -1)
        valid = torch.rand(b, lk, generator=g) > 0.1
        valid[:, :meta] = True
        return MaskSpec(q_pos.to(device), k_pos.to(device), window, meta, key_valid=valid.to(device), aligned=False)
    pos = torch.arange(lq, device=device)[None]
    valid, docs = None, None
    if kind == "padding":
        valid = torch.ones(b, lq, dtype=torch.bool)
        valid[0, meta : meta + lq // 4] = False  # padding after the meta tokens (left-padded prompt)
        valid = valid.to(device)
    if kind == "documents":  # packed training rows: a new document every ~100 tokens after the meta tokens
        starts = torch.rand(b, lq, generator=g) < 1 / 100
        starts[:, :meta] = False
        docs = starts.long().cumsum(-1).to(device)
    return MaskSpec(pos, pos, window, meta, key_valid=valid, aligned=True, q_seq=docs, k_seq=docs)


def attention_parity(device, rows):
    from ablate.kernels.attention import attention_ref, attention_sdpa
    from ablate.kernels.flex import attention_flex

    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 2e-3)):
        for label, kind, b, hq, hkv, lq, lk, d, dv, window, meta in ATTENTION_PARITY:
            if dtype == torch.float32 and kind == "cache":
                continue  # one fp32 case is enough (each costs a FlexAttention compile)
            spec = _spec(kind, b, lq, lk, window, meta, device)
            q = torch.randn(b, hq, lq, d, device=device, dtype=dtype)
            k = torch.randn(b, hkv, lk, d, device=device, dtype=dtype)
            v = torch.randn(b, hkv, lk, dv, device=device, dtype=dtype)
            # rows that see no key at all (padding queries) are discarded by the model and filled
            # differently by each backend: they get no weight in the comparison
            allowed = spec.k_pos.unsqueeze(-2) <= spec.q_pos.unsqueeze(-1)
            if spec.key_valid is not None:
                allowed = allowed & spec.key_valid.unsqueeze(-2)
            keep = allowed.any(-1)[:, None, :, None].double()
            ref_in = [t.double().requires_grad_() for t in (q, k, v)]
            ref = attention_ref(*ref_in, spec) * keep
            grad = torch.randn_like(ref) * keep
            ref.backward(grad)
            for name, fn in (("flex", attention_flex), ("sdpa", attention_sdpa)):
                try:
                    _poison(device)
                    ins = [t.clone().requires_grad_() for t in (q, k, v)]
                    out = fn(*ins, spec) * keep.to(dtype)
                    out.backward(grad.to(dtype))
                    errs = {"out": _rel(out, ref)}
                    for nm, t, r in zip("qkv", ins, ref_in):
                        errs[f"d{nm}"] = _rel(t.grad, r.grad)
                    finite = all(torch.isfinite(x).all().item() for x in (out, *[t.grad for t in ins]))
                    rows.append({"check": f"attention {name}: {label}", "dtype": str(dtype)[6:], "max_rel_err": max(errs.values()),
                                 "errs": errs, "pass": finite and max(errs.values()) < tol})
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    rows.append({"check": f"attention {name}: {label}", "dtype": str(dtype)[6:], "pass": False, "error": f"{type(e).__name__}: {e}"[:300]})


def _attn_time(label, fn, q, k, v, spec, flops_pairs, rows, anchor=None):
    hq, d, dv = q.shape[1], q.shape[-1], v.shape[-1]
    flops_fwd = 2.0 * q.shape[0] * hq * (d + dv) * flops_pairs
    try:
        with torch.no_grad():
            fwd = time_ms(lambda: fn(q, k, v, spec))
        qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        go = torch.randn(q.shape[0], hq, q.shape[2], dv, device=q.device, dtype=q.dtype)

        def step():
            out = fn(qq, kk, vv, spec)
            torch.autograd.grad(out, (qq, kk, vv), go)

        both = time_ms(step)
        rows.append({"what": label, "fwd_ms": fwd, "fwd_bwd_ms": both, "fwd_tflops": flops_fwd / fwd / 1e9,
                     "fwd_bwd_tflops": 3.5 * flops_fwd / both / 1e9, "anchor": anchor})
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append({"what": label, "error": f"{type(e).__name__}: {e}"[:300], "anchor": anchor})


def attention_bench(device, rows):
    from ablate.bench.train_step import visible_pairs
    from ablate.kernels.flex import attention_flex

    # the module, not the function ``ablate.kernels.attention`` that the package re-exports
    A = importlib.import_module("ablate.kernels.attention")
    dt = torch.bfloat16
    # the anchor: B=4 H=16 L=8192 D=64, SWA 1024 + 128 meta tokens
    b, h, l, d = 4, 16, BENCH_L, 64
    q, k, v = (torch.randn(b, h, l, d, device=device, dtype=dt) for _ in range(3))
    swa = _spec("plain", b, l, l, 1024, 128, device)
    _attn_time("flex SWA1024+128meta B4 H16 L8192 D64", attention_flex, q, k, v, swa, visible_pairs(l, 1024, 128), rows, "0.60 / 2.65 (anchor flex)")
    causal = _spec("plain", b, l, l, None, 0, device)
    _attn_time("sdpa causal B4 H16 L8192 D64 (cuDNN first)", A.attention_sdpa, q, k, v, causal, visible_pairs(l, None, 0), rows, "1.34 / 4.78 (anchor cuDNN)")
    del q, k, v

    # Llama-1B attention: 32 query heads over 8 KV heads; K/V repeated (default) vs enable_gqa
    b, hq, hkv = 2, 32, 8
    q = torch.randn(b, hq, l, d, device=device, dtype=dt)
    k, v = (torch.randn(b, hkv, l, d, device=device, dtype=dt) for _ in range(2))
    for expand in (True, False):
        A._EXPAND_GQA = expand
        _attn_time(f"sdpa causal GQA 32:8 B2 L8192 D64 ({'K/V repeated' if expand else 'enable_gqa'})", A.attention_sdpa, q, k, v, causal,
                   visible_pairs(l, None, 0), rows)
    A._EXPAND_GQA = True
    del q, k, v

    # Hymba-1B attention: 24 heads over 4 KV heads, Q/K 64, V 128, 8192 tokens + 128 meta
    t = l + 128
    q = torch.randn(b, 24, t, 64, device=device, dtype=dt)
    k = torch.randn(b, 4, t, 64, device=device, dtype=dt)
    v = torch.randn(b, 4, t, 128, device=device, dtype=dt)
    swa = _spec("plain", b, t, t, 1024, 128, device)
    full = _spec("plain", b, t, t, None, 128, device)
    _attn_time("Hymba SWA layer: flex, GQA 24:4, d64/v128, B2 L8192+128", attention_flex, q, k, v, swa, visible_pairs(t, 1024, 128), rows)
    _attn_time("Hymba full layer: sdpa causal, GQA 24:4, d64/v128", A.attention_sdpa, q, k, v, full, visible_pairs(t, None, 0), rows)
    _attn_time("Hymba full layer: flex causal (forced), d64/v128", attention_flex, q, k, v, full, visible_pairs(t, None, 0), rows)


# ---------------------------------------------------------------------------------------------------
# SSD


def _ssd_inputs(b, l, h, p, g, n, dtype, device, init, docs, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = r(b, l, h, p).to(device, dtype)
    dt = F.softplus(r(b, l, h) - 1.0).to(device)
    A = (-torch.exp(torch.rand(h, generator=gen) * math.log(16))).to(device)
    B, C = r(b, l, g, n).to(device, dtype), r(b, l, g, n).to(device, dtype)
    D = r(h).to(device)
    s0 = r(b, h, p, n).to(device) if init else None
    seq = ((torch.rand(b, l, generator=gen) < 0.002).long().cumsum(1) + 1).to(device) if docs else None
    return [x, dt, A, B, C, D, s0], seq


def ssd_parity(device, rows):
    from ablate.kernels.ssd import ssd_scan_ref
    from ablate.kernels.triton.ssd import ssd_scan_triton

    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        for label, (b, l, h, p, g, n, chunk, init, docs) in SSD_PARITY.items():
            ins, seq = _ssd_inputs(b, l, h, p, g, n, dtype, device, init, docs)
            ref_in = [t.double().requires_grad_() if t is not None else None for t in ins]
            y_ref, f_ref = ssd_scan_ref(*ref_in, chunk, seq)
            gy, gf = torch.randn_like(y_ref), torch.randn_like(f_ref)
            ((y_ref * gy).sum() + (f_ref * gf).sum()).backward()
            try:
                _poison(device)
                tin = [t.clone().requires_grad_() if t is not None else None for t in ins]
                y, f = ssd_scan_triton(*tin, chunk, seq)
                ((y.double() * gy).sum() + (f.double() * gf).sum()).backward()
                errs = {"y": _rel(y, y_ref), "final": _rel(f, f_ref)}
                for nm, t, r in zip(["dx", "ddt", "dA", "dB", "dC", "dD", "dinit"], tin, ref_in):
                    if t is not None:
                        errs[nm] = _rel(t.grad, r.grad)
                finite = torch.isfinite(y).all().item() and all(torch.isfinite(t.grad).all().item() for t in tin if t is not None)
                rows.append({"check": f"ssd triton: {label} (b{b} l{l} h{h} p{p} g{g} n{n} Q{chunk})", "dtype": str(dtype)[6:],
                             "max_rel_err": max(errs.values()), "errs": errs, "pass": finite and max(errs.values()) < tol})
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append({"check": f"ssd triton: {label}", "dtype": str(dtype)[6:], "pass": False, "error": f"{type(e).__name__}: {e}"[:300]})


def ssd_bench(device, rows):
    from ablate.kernels.ssd import ssd_scan_ref
    from ablate.kernels.triton.ssd import ssd_scan_triton

    for label, (b, l, h, p, g, n, chunk), anchor in SSD_BENCH:
        ins, _ = _ssd_inputs(b, l, h, p, g, n, torch.bfloat16, device, False, False)
        ins = [t.requires_grad_() if t is not None and t.is_floating_point() else t for t in ins]
        # floor: read x, B, C, dt once and write y (fwd); SSD FLOPs of the chunked form
        bytes_fwd = (2 * b * l * h * p + 2 * b * l * g * n) * 2 + b * l * h * 4
        flops_fwd = 2.0 * b * l * (g * chunk * n / 2 + h * (chunk * p / 2 + 2 * p * n))
        for name, fn in (("triton", ssd_scan_triton), ("torch chunked reference", ssd_scan_ref)):
            try:
                with torch.no_grad():
                    fwd = time_ms(lambda: fn(*ins, chunk, None), warmup=2, rep=10 if name != "triton" else 20)
                gy = torch.randn(b, l, h, p, device=device, dtype=torch.bfloat16)

                def step():
                    y, _ = fn(*ins, chunk, None)
                    torch.autograd.grad(y, [t for t in ins if t is not None], gy)

                both = time_ms(step, warmup=2, rep=10 if name != "triton" else 20)
                rows.append({"what": f"ssd {name}: {label}", "fwd_ms": fwd, "fwd_bwd_ms": both, "fwd_tflops": flops_fwd / fwd / 1e9,
                             "fwd_gbps": bytes_fwd / fwd / 1e6, "floor_fwd_ms": max(bytes_fwd / HBM, flops_fwd / PEAK_FLOPS) * 1e3,
                             "anchor": anchor if name == "triton" else None})
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append({"what": f"ssd {name}: {label}", "error": f"{type(e).__name__}: {e}"[:300]})
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: attention-parity ssd-parity attention-bench ssd-bench")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("fastpaths: needs a CUDA device (the CPU tests cover the same paths at tiny sizes)")
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    parity, timing, clock = [], [], {}
    parts = [("ssd-parity", ssd_parity, parity), ("attention-parity", attention_parity, parity),
             ("ssd-bench", ssd_bench, timing), ("attention-bench", attention_bench, timing)]
    for name, fn, rows in parts:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            fn(device, rows)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"check" if rows is parity else "what": name, "error": f"{type(e).__name__}: {e}"[:300], "pass": False})
        clock[name] = time.perf_counter() - t0
        torch.cuda.empty_cache()
        (args.out / "fastpaths.json").write_text(json.dumps(
            {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "seconds": clock, "parity": parity, "timing": timing},
            indent=2, default=str))
    print(f"\nfast paths on {torch.cuda.get_device_name(device)}, torch {torch.__version__}; seconds per part: "
          + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))
    print(f"{'parity check':<86} {'dtype':>8} {'max rel err':>11}  result")
    for r in parity:
        err = f"{r['max_rel_err']:.2e}" if "max_rel_err" in r else "-"
        print(f"{r['check'][:86]:<86} {r.get('dtype', ''):>8} {err:>11}  {'PASS' if r.get('pass') else 'FAIL ' + r.get('error', str(r.get('errs', '')))[:120]}")
    print(f"\n{'timing (bf16, median ms)':<64} {'fwd':>7} {'fwd+bwd':>8} {'TF/s f':>7} {'TF/s fb':>7}  anchor / note")
    for r in timing:
        if "error" in r:
            print(f"{r['what'][:64]:<64} ERROR {r['error'][:150]}")
            continue
        extra = f"floor {r['floor_fwd_ms']:.2f} ms fwd, {r['fwd_gbps']:.0f} GB/s" if "floor_fwd_ms" in r else ""
        tfb = f"{r['fwd_bwd_tflops']:.0f}" if "fwd_bwd_tflops" in r else "-"
        print(f"{r['what'][:64]:<64} {r['fwd_ms']:>7.2f} {r['fwd_bwd_ms']:>8.2f} {r['fwd_tflops']:>7.0f} {tfb:>7}  {r.get('anchor') or ''} {extra}")


if __name__ == "__main__":
    main()
