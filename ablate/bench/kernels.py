"""Kernel parity and benchmark runner, generic over ``ablate.kernels.backend.OPS``.

For every op: its reference and each registered fast path whose ``available()`` accepts the inputs
on this device, at the shapes of shared/gpu-anchors.md, so fast paths registered later appear without
edits here.

    python -m ablate.bench.kernels --parity --bench [--sweep] --out DIR [--ops selective_scan,conv1d]

--parity  every fast path against the reference run in fp64 on the same (bf16-representable) inputs:
          ||out - ref|| / ||ref|| for each output and each input gradient, fp32 and bf16, odd lengths
          and lengths off the block sizes, with and without initial states / packed documents; fresh
          random inputs per check; outputs PyTorch allocates are NaN-poisoned
          (fill_uninitialized_memory) so an unwritten element fails. PASS/FAIL per check.
--bench   median ms (CUDA events via triton.testing.do_bench, L2 flushed between repeats) of the
          forward (no grad) and forward+backward at the anchor shapes, bf16; GB/s counting each input
          read once and each output written once, TFLOP/s where the op is matmul-bound, the fraction
          of the roofline floor max(bytes / 3.0 TB/s, flops / 772 TFLOP/s), the anchor beside.
--sweep   launch configurations of the Triton selective scan and conv (env overrides) at the anchor
          shapes.

Writes DIR/parity.{json,md}, DIR/bench.{json,md}, DIR/sweep.json, DIR/env.json and prints a compact
table last.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# measured on the lent H100 (shared/gpu-anchors.md)
HBM_BYTES_PER_S = 3.0e12
BF16_FLOPS_PER_S = 772e12
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
_DEADLINE = [math.inf]  # perf_counter() after which no new check or timing starts (--budget-s)


def out_of_time() -> bool:
    return time.perf_counter() > _DEADLINE[0]


@dataclass
class Anchor:
    label: str
    fwd_ms: float | None
    fwd_bwd_ms: float | None = None


@dataclass
class Case:
    """One op at one benchmark shape: how to make its inputs and what it must move and compute."""

    name: str
    op: str
    shape: dict
    make: Callable  # (shape, variant, device, generator) -> positional args in fp64 (ints stay ints)
    grads: tuple[int, ...]  # positions of the args that take gradients
    bytes_fwd: Callable  # (shape, element size) -> bytes read once + written once
    bytes_bwd: Callable
    flops_fwd: Callable | None = None
    flops_bwd: Callable | None = None
    anchors: list[Anchor] = field(default_factory=list)
    parity: list[tuple[dict, str]] = field(default_factory=list)  # (shape, variant)
    ref_shape: dict | None = None  # where the reference is too slow or too big at the full shape
    fp32_args: tuple[int, ...] = ()  # stay fp32 in a bf16 run (the model passes them so)
    fp32_tol: float = TOL[torch.float32]
    state_outputs: tuple[int, ...] = ()  # outputs whose gradient some backends drop
    state_grad_exempt: tuple[str, ...] = ()  # ... those backends

    def label(self, shape: dict | None = None) -> str:
        return " ".join(f"{k}={v}" for k, v in (shape or self.shape).items())


# ---------------------------------------------------------------------------------------------
# inputs


def _randn(g, *shape, device):
    return torch.randn(*shape, generator=g, device=device, dtype=torch.float64)


def _docs(g, b, l, device):
    # packed documents: sorted document ids with a few boundaries per row
    return torch.sort(torch.randint(0, 4, (b, l), generator=g, device=device), dim=1).values


def _dt_bias(g, d, device):
    # Mamba's init: softplus^-1 of dt log-uniform in [1e-3, 1e-1]
    u = torch.rand(d, generator=g, device=device, dtype=torch.float64)
    dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dt + torch.log(-torch.expm1(-dt))


def make_scan(s, variant, device, g):
    b, d, n, l = s["B"], s["D"], s["N"], s["L"]
    # (b, d, l) / (b, n, l) views of (b, l, .) storage, as ablate/model/ssm.py passes them
    u = _randn(g, b, l, d, device=device).transpose(1, 2)
    delta = (0.5 * _randn(g, b, l, d, device=device)).transpose(1, 2)
    A = -torch.arange(1, n + 1, device=device, dtype=torch.float64).expand(d, n).contiguous()
    A = A * torch.exp(0.1 * _randn(g, d, n, device=device))
    B = _randn(g, b, l, n, device=device).transpose(1, 2)
    C = _randn(g, b, l, n, device=device).transpose(1, 2)
    D = _randn(g, d, device=device)
    z = _randn(g, b, l, d, device=device).transpose(1, 2)
    bias = _dt_bias(g, d, device)
    extras = variant == "state+docs"
    h0 = _randn(g, b, d, n, device=device) if extras else None
    seq = _docs(g, b, l, device) if extras else None
    return [u, delta, A, B, C, D, z, bias, True, h0, seq]


def make_conv(s, variant, device, g):
    b, c, l, k = s["B"], s["D"], s["T"], s["K"]
    x = _randn(g, b, l, c, device=device).transpose(1, 2)
    w = _randn(g, c, k, device=device) / math.sqrt(k)
    bias = _randn(g, c, device=device)
    extras = variant == "state+docs"
    init = _randn(g, b, c, k - 1, device=device) if extras else None
    seq = _docs(g, b, l, device) if extras else None
    return [x, w, bias, "silu", init, seq]


def make_attention(s, variant, device, g):
    from ablate.kernels.attention import MaskSpec

    b, h, l, d = s["B"], s["H"], s["L"], s["D"]
    hkv = s.get("HKV", h)
    q = _randn(g, b, l, h, d, device=device).transpose(1, 2)
    k = _randn(g, b, l, hkv, d, device=device).transpose(1, 2)
    v = _randn(g, b, l, hkv, d, device=device).transpose(1, 2)
    pos = torch.arange(l, device=device)[None]
    window, meta = s.get("window"), s.get("meta", 0)
    docs = _docs(g, b, l, device) if variant == "docs" else None
    spec = MaskSpec(q_pos=pos, k_pos=pos, window=window, num_meta=meta, aligned=True, q_seq=docs, k_seq=docs)
    return [q, k, v, spec, None]


def make_ssd(s, variant, device, g):
    b, l, h, p, n, grp = s["B"], s["T"], s["H"], s["V"], s["K"], s.get("G", s["H"])
    x = _randn(g, b, l, h, p, device=device)
    dt = F.softplus(0.5 * _randn(g, b, l, h, device=device) + _dt_bias(g, h, device))
    A = -torch.exp(torch.rand(h, generator=g, device=device, dtype=torch.float64) * math.log(16))
    B = _randn(g, b, l, grp, n, device=device)
    C = _randn(g, b, l, grp, n, device=device)
    D = _randn(g, h, device=device)
    extras = variant == "state+docs"
    h0 = _randn(g, b, h, p, n, device=device) if extras else None
    seq = _docs(g, b, l, device) if extras else None
    return [x, dt, A, B, C, D, h0, s.get("chunk", 64), seq]


def _causal_pairs(l: int, window: int | None, meta: int) -> int:
    """Visible (query, key) pairs of an aligned causal mask with an optional window + meta tokens."""
    if window is None or window >= l:
        return l * (l + 1) // 2
    i = torch.arange(l, dtype=torch.float64)
    in_window = torch.minimum(i + 1, torch.tensor(float(window)))
    extra_meta = torch.clamp(torch.minimum(torch.tensor(float(meta)), i - window + 1), min=0)
    return int((in_window + extra_meta).sum().item())


def default_cases() -> list[Case]:
    scan_bytes = lambda s, e: (3 * s["B"] * s["D"] * s["L"] + 2 * s["B"] * s["N"] * s["L"]) * e + s["D"] * s["N"] * 4 + s["B"] * s["D"] * s["L"] * e + s["B"] * s["D"] * s["N"] * 4
    # backward: reads u, delta, z, B, C, dy; writes du, ddelta, dz, dB, dC
    scan_bwd = lambda s, e: (4 * s["B"] * s["D"] * s["L"] + 2 * s["B"] * s["N"] * s["L"]) * e + (3 * s["B"] * s["D"] * s["L"] + 2 * s["B"] * s["N"] * s["L"]) * e
    conv_bytes = lambda s, e: 2 * s["B"] * s["D"] * s["T"] * e
    conv_bwd = lambda s, e: 3 * s["B"] * s["D"] * s["T"] * e
    att_bytes = lambda s, e: 4 * s["B"] * s["H"] * s["L"] * s["D"] * e
    att_bwd = lambda s, e: 8 * s["B"] * s["H"] * s["L"] * s["D"] * e  # q k v o do read, dq dk dv written
    att_flops = lambda s: 4 * s["B"] * s["H"] * s["D"] * _causal_pairs(s["L"], s.get("window"), s.get("meta", 0))
    ssd_bytes = lambda s, e: (2 * s["B"] * s["T"] * s["H"] * s["V"] + 2 * s["B"] * s["T"] * s.get("G", s["H"]) * s["K"]) * e + s["B"] * s["T"] * s["H"] * 4
    ssd_bwd = lambda s, e: 2 * ssd_bytes(s, e)
    # chunked SSD: per chunk and head C B^T (T x T x N), its product with x (T x T x P), the chunk
    # state (N x P x T) and the state's read-out (T x N x P)
    ssd_flops = lambda s: 2 * s["B"] * s["T"] * s["H"] * (s.get("chunk", 64) * (s["K"] + s["V"]) + 2 * s["K"] * s["V"])

    scan_parity = [({"B": 2, "D": 76, "N": 16, "L": l}, v) for l in (1, 17, 300, 1000) for v in ("plain", "state+docs")]
    scan_parity += [({"B": 2, "D": 40, "N": 5, "L": 77}, v) for v in ("plain", "state+docs")]
    conv_parity = [({"B": 2, "D": 100, "T": l, "K": 4}, v) for l in (1, 2, 17, 300, 1000) for v in ("plain", "state+docs")]
    conv_parity += [({"B": 2, "D": 36, "T": 131, "K": k}, "state+docs") for k in (2, 3, 8)]
    att_parity = [({"B": 2, "H": 4, "HKV": 2, "L": l, "D": 64}, "causal") for l in (1, 17, 300)]
    att_parity += [({"B": 2, "H": 4, "HKV": 2, "L": 300, "D": 64, "window": 64, "meta": 8}, "causal")]
    att_parity += [({"B": 2, "H": 4, "HKV": 4, "L": 300, "D": 64}, "docs")]
    ssd_parity = [({"B": 2, "T": l, "H": 4, "K": 32, "V": 32, "G": 2}, v) for l in (1, 17, 300) for v in ("plain", "state+docs")]

    return [
        Case(
            "selective_scan", "selective_scan", {"B": 2, "D": 1024, "N": 16, "L": 8192}, make_scan,
            grads=(0, 1, 2, 3, 4, 5, 6, 7, 9), bytes_fwd=scan_bytes, bytes_bwd=scan_bwd,
            anchors=[Anchor("torch associative_scan compiled, materialized dA/dBx (fp32)", 1.37)],
            parity=scan_parity, ref_shape={"B": 2, "D": 1024, "N": 16, "L": 512}, fp32_args=(2,),
            state_outputs=(1,), state_grad_exempt=("mamba_ssm",),
        ),
        Case(
            "conv1d", "conv1d", {"B": 4, "D": 4096, "T": 8192, "K": 4}, make_conv,
            grads=(0, 1, 2, 4), bytes_fwd=conv_bytes, bytes_bwd=conv_bwd,
            anchors=[Anchor("fla-core causal_conv1d + SiLU (Triton)", 0.44, 2.06)],
            parity=conv_parity, state_outputs=(1,),
        ),
        Case(
            "ssd", "ssd", {"B": 4, "T": 8192, "H": 32, "K": 128, "V": 64, "G": 32}, make_ssd,
            grads=(0, 1, 2, 3, 4, 5, 6), bytes_fwd=ssd_bytes, bytes_bwd=ssd_bwd, flops_fwd=ssd_flops,
            flops_bwd=lambda s: 2 * ssd_flops(s),
            anchors=[Anchor("fla-core chunk_simple_gla (fwd only on this image)", 0.86)],
            parity=ssd_parity, ref_shape={"B": 4, "T": 2048, "H": 32, "K": 128, "V": 64, "G": 32}, fp32_tol=1e-3,
        ),
        Case(
            "attention/causal", "attention", {"B": 4, "H": 16, "L": 8192, "D": 64}, make_attention,
            grads=(0, 1, 2), bytes_fwd=att_bytes, bytes_bwd=att_bwd, flops_fwd=att_flops,
            flops_bwd=lambda s: 2.5 * att_flops(s),
            anchors=[
                Anchor("SDPA cuDNN", 1.34, 4.78),
                Anchor("SDPA flash", 1.99, 7.61),
                Anchor("FlexAttention", 1.68, 6.67),
            ],
            parity=att_parity, ref_shape={"B": 4, "H": 16, "L": 2048, "D": 64}, fp32_tol=1e-3,
        ),
        Case(
            "attention/swa", "attention", {"B": 4, "H": 16, "L": 8192, "D": 64, "window": 1024, "meta": 128},
            make_attention, grads=(0, 1, 2), bytes_fwd=att_bytes, bytes_bwd=att_bwd, flops_fwd=att_flops,
            flops_bwd=lambda s: 2.5 * att_flops(s),
            anchors=[Anchor("FlexAttention SWA 1024 + 128 meta", 0.60, 2.65)],
            ref_shape={"B": 4, "H": 16, "L": 2048, "D": 64, "window": 1024, "meta": 128}, fp32_tol=1e-3,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# running an implementation


def implementations(op_name: str) -> dict[str, Callable]:
    from ablate.kernels.backend import OPS

    op = OPS[op_name]
    return {"reference": op.reference, **{name: fn for name, (fn, _) in op.fast_paths.items()}}


def is_available(op_name: str, impl: str, args) -> bool:
    from ablate.kernels.backend import OPS

    if impl == "reference":
        return True
    try:
        return bool(OPS[op_name].fast_paths[impl][1](*args))
    except Exception:  # an availability check that cannot judge these inputs declines
        return False


def cast(case: Case, args, dtype):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a = a.to(torch.float32 if (i in case.fp32_args and dtype != torch.float64) else dtype)
        out.append(a)
    return out


def with_grads(case: Case, args):
    """Detached leaf copies (keeping strides) of the args that take gradients."""
    args = list(args)
    leaves = []
    for i in case.grads:
        if isinstance(args[i], torch.Tensor):
            args[i] = args[i].detach().requires_grad_()
            leaves.append(args[i])
    return args, leaves


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def run_with_grads(fn, case: Case, args, cotangents, outputs: tuple[int, ...] | None = None):
    args, leaves = with_grads(case, args)
    outs = as_tuple(fn(*args))
    idx = outputs if outputs is not None else tuple(range(len(outs)))
    ys = [outs[i] for i in idx]
    cts = [cotangents[i].to(outs[i].dtype) for i in idx]
    grads = torch.autograd.grad(ys, leaves, cts, allow_unused=True)
    return [o.detach() for o in outs], list(grads)


def rel_err(x, ref, floor: float = 0.0) -> float:
    """||x - ref|| / max(||ref||, floor). A gradient that vanishes for these inputs (dA at one step
    with no state to decay) has a reference of pure rounding noise (~1e-18 in fp64); relative to that,
    an exact zero scores 1.0 (seen on the H100: reports/kernels/h100/ssd-attention-parity), so such a
    gradient is judged at ``floor``, the scale of the check's other gradients."""
    if x is None or ref is None:
        return 0.0 if x is None and ref is None else float("inf")
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")  # NaN never passes (unwritten outputs are NaN-poisoned)
    denom = max(ref.norm().item(), floor)
    diff = (x - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _floor(refs) -> float:
    # 1% of the largest reference tensor of the check: the scale a vanishing gradient's noise is judged at
    norms = [r.double().norm().item() for r in refs if r is not None]
    return 1e-2 * max(norms) if norms else 0.0


# ---------------------------------------------------------------------------------------------
# parity


@contextlib.contextmanager
def poisoned_allocations():
    """torch.empty* fill with NaN while deterministic mode is on: an element a kernel forgets to
    write shows up as NaN."""
    old_det, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with contextlib.ExitStack() as stack:
            import warnings

            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def parity(cases: list[Case], device: torch.device, seed: int, log) -> list[dict]:
    rows = []
    g = torch.Generator(device=device)
    for case in cases:
        impls = implementations(case.op)
        for shape, variant in case.parity:
            if out_of_time():
                rows.append({"op": case.name, "impl": "*", "dtype": "*", "shape": case.label(shape), "variant": variant,
                             "worst": float("nan"), "tol": 0.0, "status": "SKIP", "errors": {}, "error": "time budget"})
                continue
            g.manual_seed(seed + len(rows))
            base = case.make(shape, variant, device, g)
            # values representable in bf16, so fp32, bf16 and the fp64 reference see the same inputs
            base = [a.to(torch.bfloat16).double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in base]
            ref_fn = impls["reference"]
            ref_args = cast(case, base, torch.float64)
            with torch.no_grad():
                outs0 = as_tuple(ref_fn(*ref_args))
            cot = [torch.randn(o.shape, generator=g, device=device, dtype=torch.float64) for o in outs0]
            ref_out, ref_grads = run_with_grads(ref_fn, case, ref_args, cot)
            ref_main = None  # reference gradients from output 0 alone, for backends exempt from state grads
            for dtype in (torch.float32, torch.bfloat16):
                args = cast(case, base, dtype)
                for impl, fn in impls.items():
                    if not is_available(case.op, impl, args):
                        continue
                    if impl == "reference" and dtype == torch.float32:
                        continue  # fp32 reference vs fp64 reference says little; its bf16 error is context
                    if out_of_time():
                        rows.append({"op": case.name, "impl": impl, "dtype": str(dtype).replace("torch.", ""), "shape": case.label(shape),
                                     "variant": variant, "worst": float("nan"), "tol": 0.0, "status": "SKIP", "errors": {}, "error": "time budget"})
                        continue
                    exempt = impl in case.state_grad_exempt
                    outputs = tuple(i for i in range(len(cot)) if not (exempt and i in case.state_outputs))
                    if exempt and ref_main is None:
                        ref_main = run_with_grads(ref_fn, case, ref_args, cot, outputs)[1]
                    want_grads = ref_main if exempt else ref_grads
                    t0 = time.perf_counter()
                    try:
                        with poisoned_allocations():
                            out, grads = run_with_grads(fn, case, args, cot, outputs)
                        floor = _floor(want_grads)
                        errs = {f"out{i}": rel_err(o, r) for i, (o, r) in enumerate(zip(out, ref_out))}
                        names = [i for i in case.grads if isinstance(args[i], torch.Tensor)]
                        errs.update({f"d{i}": rel_err(gr, rg, floor) for i, gr, rg in zip(names, grads, want_grads)})
                        error = None
                    except Exception as e:  # a crash is a FAIL with its message, not an abort
                        errs, error = {}, f"{type(e).__name__}: {e}"[:300]
                    tol = case.fp32_tol if dtype == torch.float32 else TOL[torch.bfloat16]
                    worst = max(errs.values()) if errs else float("inf")
                    status = "PASS" if error is None and worst <= tol else "FAIL"
                    if impl == "reference":
                        status = "INFO"  # the reference's own bf16 rounding, for scale
                    row = {
                        "op": case.name, "impl": impl, "dtype": str(dtype).replace("torch.", ""),
                        "shape": case.label(shape), "variant": variant, "worst": worst, "tol": tol,
                        "status": status, "errors": errs, "error": error,
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                    rows.append(row)
                    log(f"{status:4} {case.name:16} {impl:13} {row['dtype']:8} {variant:10} {case.label(shape):34} worst {worst:.2e} (tol {tol:.0e})" + (f"  {error}" if error else ""))
    return rows


# ---------------------------------------------------------------------------------------------
# benchmark


def time_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median ms with CUDA events; triton.testing.do_bench flushes L2 between repeats."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    except ImportError:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def measure(case: Case, impl: str, fn, shape: dict, device, g, dtype=torch.bfloat16, backward: bool = True) -> dict:
    args = cast(case, case.make(shape, "plain", device, g), dtype)
    if not is_available(case.op, impl, args):
        return {"skipped": "not available for these inputs"}
    es = torch.tensor([], dtype=dtype).element_size()

    def fwd():
        with torch.no_grad():
            fn(*args)

    res = {"shape": case.label(shape), "fwd_ms": time_ms(fwd)}
    if backward:
        gargs, leaves = with_grads(case, args)
        outs = as_tuple(fn(*gargs))
        cot = torch.randn_like(outs[0])
        del outs

        def fwd_bwd():
            out = as_tuple(fn(*gargs))[0]
            torch.autograd.grad(out, leaves, cot, allow_unused=True)

        res["fwd_bwd_ms"] = time_ms(fwd_bwd)
    b_f, b_b = case.bytes_fwd(shape, es), case.bytes_bwd(shape, es)
    f_f = case.flops_fwd(shape) if case.flops_fwd else 0.0
    f_b = case.flops_bwd(shape) if case.flops_bwd else 0.0
    floor_f = max(b_f / HBM_BYTES_PER_S, f_f / BF16_FLOPS_PER_S) * 1e3
    res.update(
        fwd_GBps=b_f / res["fwd_ms"] * 1e-6,
        fwd_TFLOPs=f_f / res["fwd_ms"] * 1e-9 if f_f else None,
        fwd_roof=floor_f / res["fwd_ms"],
    )
    if "fwd_bwd_ms" in res:
        floor_fb = max((b_f + b_b) / HBM_BYTES_PER_S, (f_f + f_b) / BF16_FLOPS_PER_S) * 1e3
        res.update(
            fwd_bwd_GBps=(b_f + b_b) / res["fwd_bwd_ms"] * 1e-6,
            fwd_bwd_TFLOPs=(f_f + f_b) / res["fwd_bwd_ms"] * 1e-9 if f_f else None,
            fwd_bwd_roof=floor_fb / res["fwd_bwd_ms"],
            bwd_over_fwd=res["fwd_bwd_ms"] / res["fwd_ms"],
        )
    return res


def bench(cases: list[Case], device, seed: int, log) -> list[dict]:
    rows = []
    g = torch.Generator(device=device)
    for case in cases:
        for impl, fn in implementations(case.op).items():
            shape = case.shape
            note = ""
            if impl == "reference" and case.ref_shape is not None:
                shape, note = case.ref_shape, "reference timed at a smaller shape (python loop / dense mask)"
            g.manual_seed(seed)
            t0 = time.perf_counter()
            try:
                if out_of_time():
                    raise TimeoutError("time budget")
                res = measure(case, impl, fn, shape, device, g)
            except torch.cuda.OutOfMemoryError:
                res = {"skipped": "out of memory"}
            except Exception as e:
                res = {"skipped": f"{type(e).__name__}: {e}"[:300]}
            torch.cuda.empty_cache()
            row = {"op": case.name, "impl": impl, "note": note, **res, "seconds": round(time.perf_counter() - t0, 1)}
            row.setdefault("shape", case.label(shape))
            rows.append(row)
            log(_bench_line(row))
        for a in case.anchors:
            rows.append({"op": case.name, "impl": "anchor", "shape": case.label(), "note": a.label, "fwd_ms": a.fwd_ms, "fwd_bwd_ms": a.fwd_bwd_ms})
    return rows


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _bench_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['op']:16} {r['impl']:13} skipped: {r['skipped']}"
    speed = lambda k: _fmt(r.get(f"{k}_TFLOPs"), ".0f") + " TF/s" if r.get(f"{k}_TFLOPs") else _fmt(r.get(f"{k}_GBps"), ".0f") + " GB/s"
    roof = lambda k: _fmt(100 * r[f"{k}_roof"], ".0f") + "%" if r.get(f"{k}_roof") is not None else "-"
    return (
        f"{r['op']:16} {r['impl']:13} fwd {_fmt(r.get('fwd_ms'), '8.3f')} ms {speed('fwd'):>11} {roof('fwd'):>4} | "
        f"f+b {_fmt(r.get('fwd_bwd_ms'), '8.3f')} ms {speed('fwd_bwd') if r.get('fwd_bwd_ms') else '':>11} {roof('fwd_bwd') if r.get('fwd_bwd_ms') else '':>4} "
        f"{('x' + _fmt(r.get('bwd_over_fwd'), '.1f')) if r.get('bwd_over_fwd') else '':>5}  {r.get('note', '')}"
    )


# ---------------------------------------------------------------------------------------------
# launch-configuration sweep of this module's own Triton kernels


SWEPT_OPS = {"selective_scan", "conv1d"}
SCAN_FWD = ["8,16,2", "16,16,4", "16,16,2", "8,32,2", "8,8,2"]
SCAN_SEGMENTS = ["1", "2", "4", "8"]
SCAN_BWD = {16: ["16,4,1", "32,4,1", "16,4,0", "16,8,1"], 8: ["16,4,1", "32,4,1"]}  # T -> (BLOCK_D, warps, dot)
CONV = ["64,64,4", "128,32,4", "64,64,8"]


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sweep(cases: list[Case], device, seed: int, log) -> list[dict]:
    by_op = {c.name: c for c in cases}
    rows = []
    g = torch.Generator(device=device)

    def one(case, label, backward, **envs):
        g.manual_seed(seed)
        with env(**envs):
            try:
                if out_of_time():
                    raise TimeoutError("time budget")
                res = measure(case, "triton", implementations(case.op)["triton"], case.shape, device, g, backward=backward)
            except Exception as e:
                res = {"skipped": f"{type(e).__name__}: {e}"[:200]}
        row = {"op": case.name, "impl": "triton", "config": label, **res}
        rows.append(row)
        log(f"sweep {case.name:14} {label:28} " + (f"fwd {_fmt(res.get('fwd_ms'), '.3f')} ms ({_fmt(100 * res['fwd_roof'], '.0f')}% roof)" if "fwd_ms" in res else res.get("skipped", "")) + (f"  f+b {_fmt(res.get('fwd_bwd_ms'), '.3f')} ms" if "fwd_bwd_ms" in res else ""))

    if "selective_scan" in by_op and "triton" in implementations("selective_scan"):
        case = by_op["selective_scan"]
        for cfg in SCAN_FWD:
            one(case, f"fwd {cfg}", False, ABLATE_SCAN_FWD_CONFIG=cfg)
        for seg in SCAN_SEGMENTS:
            one(case, f"fwd {SCAN_FWD[0]} segments {seg}", False, ABLATE_SCAN_FWD_CONFIG=SCAN_FWD[0], ABLATE_SCAN_SEGMENTS=seg)
        for t, bwd_cfgs in SCAN_BWD.items():
            for cfg in bwd_cfgs:
                one(case, f"fwd 8,{t},2 bwd {cfg}", True, ABLATE_SCAN_FWD_CONFIG=f"8,{t},2", ABLATE_SCAN_BWD_CONFIG=cfg)
    if "conv1d" in by_op and "triton" in implementations("conv1d"):
        case = by_op["conv1d"]
        for cfg in CONV:
            one(case, f"fwd {cfg} bwd {cfg}", True, ABLATE_CONV_FWD_CONFIG=cfg, ABLATE_CONV_BWD_CONFIG=cfg)
    return rows


# ---------------------------------------------------------------------------------------------
# reports


def _md_parity(rows) -> str:
    lines = ["| status | op | impl | dtype | variant | shape | worst rel err | tol |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['status']} | {r['op']} | {r['impl']} | {r['dtype']} | {r['variant']} | {r['shape']} | {r['worst']:.2e} | {r['tol']:.0e} |" + (f" {r['error']}" if r["error"] else ""))
    return "\n".join(lines) + "\n"


def _md_bench(rows) -> str:
    lines = [
        "| op | impl | shape | fwd ms | fwd GB/s | fwd TFLOP/s | fwd % roof | f+b ms | f+b % roof | f+b / fwd | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['op']} | {r['impl']} | {r.get('shape', '')} | skipped: {r['skipped']} | | | | | | | |")
            continue
        pct = lambda k: _fmt(100 * r[k], ".0f") + "%" if r.get(k) is not None else "-"
        lines.append(
            f"| {r['op']} | {r['impl']} | {r.get('shape', '')} | {_fmt(r.get('fwd_ms'), '.3f')} | {_fmt(r.get('fwd_GBps'), '.0f')} | "
            f"{_fmt(r.get('fwd_TFLOPs'), '.0f')} | {pct('fwd_roof')} | {_fmt(r.get('fwd_bwd_ms'), '.3f')} | {pct('fwd_bwd_roof')} | "
            f"{_fmt(r.get('bwd_over_fwd'), '.2f')} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def environment(args) -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "ceilings": {"hbm_bytes_per_s": HBM_BYTES_PER_S, "bf16_flops_per_s": BF16_FLOPS_PER_S},
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    for pkg in ("mamba_ssm", "causal_conv1d", "flash_attn"):
        try:
            info[pkg] = __import__(pkg).__version__
        except Exception:
            info[pkg] = None
    from ablate.rundir import git_sha

    info["git"] = git_sha()  # honours ABLATE_GIT_SHA (a lent machine's copy may carry a stale .git)
    return info


# ---------------------------------------------------------------------------------------------
# offline compile check (no GPU): every constexpr variant of this module's Triton kernels for sm_90,
# with ptxas's resource report. The CPU interpreter runs kernels as Python and misses compile-time
# errors (a loop-carried value changing type, say); this catches them before GPU time is spent.


def _compile_sm90(kernel, constexprs: dict, ptr_types: dict, num_warps: int, not_divisible=()) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: "constexpr" if n in constexprs else ("*" + ptr_types.get(n, "fp32") if n.endswith("_ptr") else "i32") for n in names}
    # what the JIT assumes at run time for pointers and sizes divisible by 16
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in constexprs and n not in not_divisible}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    info = {"n_regs": None, "spill_bytes": None}
    try:  # ptxas's report, through cuobjdump next to the bundled ptxas
        import re
        import tempfile

        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", out)
        if m:
            info = {"n_regs": int(m.group(1)), "spill_bytes": int(m.group(2))}
    except Exception:
        pass
    return info


def compile_check(log) -> list[dict]:
    import itertools

    from ablate.kernels.triton import conv1d as cv
    from ablate.kernels.triton import selective_scan as sc

    rows = []
    lengths = ("length", "nchunks", "chunks_per_seg", "tiles_per_prog", "nseg")

    # the model's layout: channels are the contiguous axis, which the JIT specializes to 1
    unit = {"s_ud", "s_td", "s_zd", "s_yd", "s_Bn", "s_Cn", "s_An", "s_gd", "s_dud", "s_dtd", "s_dzd", "s_dBn", "s_dCn",
            "s_xc", "s_yc", "s_wk", "s_gc", "s_dxc"}

    def one(name, kernel, constexprs, ptrs, warps):
        constexprs = {**{a: 1 for a in kernel.arg_names if a in unit}, **constexprs}
        t0 = time.perf_counter()
        try:
            info = _compile_sm90(kernel, constexprs, ptrs, warps, lengths)
            row = {"kernel": name, "ok": True, **info}
        except Exception as e:
            row = {"kernel": name, "ok": False, "error": f"{type(e).__name__}: {e}"[-400:]}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        log(("ok  " if row["ok"] else "FAIL") + f" {name}" + (f"  regs {row['n_regs']} spill {row['spill_bytes']} B" if row["ok"] else f"  {row['error']}"))

    for dt in ("bf16", "fp32"):
        io = {k: dt for k in ("u_ptr", "dt_ptr", "z_ptr", "y_ptr", "B_ptr", "C_ptr", "D_ptr", "bias_ptr", "h0_ptr", "dy_ptr", "du_ptr", "ddt_ptr", "dz_ptr")}
        io["seq_ptr"] = "i64"
        for (bd, t, w), bn in itertools.product([sc.fwd_config(16)], (16, 8)):
            for full, extras, store, segmented in itertools.product((True, False), (True, False), (True, False), (True, False)):
                c = dict(HAS_D=full, HAS_Z=full, HAS_BIAS=full, SOFTPLUS=full, HAS_H0=extras, HAS_SEQ=extras, STORE_CK=store, SEGMENTED=segmented, BLOCK_D=bd, BLOCK_N=bn, T=t)
                one(f"scan fwd {dt} n{bn} full={full} h0+seq={extras} store={store} seg={segmented}", sc._scan_fwd_kernel, c, io, w)
            for extras in (True, False):
                c = dict(HAS_BIAS=True, SOFTPLUS=True, HAS_SEQ=extras, BLOCK_D=bd, BLOCK_N=bn, T=t)
                one(f"scan segment-state {dt} n{bn} seq={extras}", sc._segment_state_kernel, c, io, w)
            bbd, bw, dot = sc.bwd_config(bn, t)
            for full, extras in itertools.product((True, False), (True, False)):
                c = dict(HAS_D=full, HAS_Z=full, HAS_BIAS=full, SOFTPLUS=full, HAS_SEQ=extras, HAS_DHL=extras, DOT_REDUCE=dot,
                         DOT_PRECISION="tf32x3" if dt == "fp32" else "tf32", FLIP_SCAN=True, BLOCK_D=bbd, BLOCK_N=bn, T=t)
                one(f"scan bwd {dt} n{bn} full={full} seq+dhl={extras} dot={dot}", sc._scan_bwd_kernel, c, io, bw)
        one("scan segment-combine", sc._segment_combine_kernel, dict(HAS_H0=True, BLOCK=256), {"h0_ptr": dt}, 4)
        cio = {k: dt for k in ("x_ptr", "w_ptr", "b_ptr", "init_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dinit_ptr")}
        cio["seq_ptr"] = "i64"
        bc, bl, w = cv.fwd_config()
        for k, extras in itertools.product((4, 2, 8), (True, False)):
            c = dict(K=k, HAS_BIAS=True, SILU=True, HAS_INIT=extras, HAS_SEQ=extras, BLOCK_C=bc, BLOCK_L=bl)
            one(f"conv fwd {dt} k{k} init+seq={extras}", cv._conv_fwd_kernel, c, cio, w)
        for k, extras in itertools.product((4, 2, 8), (True, False)):
            bc, bl, w = cv.bwd_config(extras)
            c = dict(K=k, KP=max(1, 1 << (k - 1).bit_length()), HAS_BIAS=True, SILU=True, HAS_INIT=extras, HAS_SEQ=extras, INIT_GRAD=extras, BLOCK_C=bc, BLOCK_L=bl)
            one(f"conv bwd {dt} k{k} init+seq={extras}", cv._conv_bwd_kernel, c, cio, w)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablate.bench.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--parity", action="store_true")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--compile-check", action="store_true", help="compile this module's Triton kernels for sm_90 offline (no GPU needed)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ops", default="", help="comma-separated case names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--budget-s", type=float, default=0.0, help="start no new check or timing after this many seconds (0: no limit)")
    args = p.parse_args(argv)
    if args.compile_check:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = compile_check(print)
        (args.out / "compile_check.json").write_text(json.dumps(rows, indent=1))
        bad = [r for r in rows if not r["ok"]]
        spills = [r for r in rows if r.get("spill_bytes")]
        print(f"COMPILE {len(rows) - len(bad)}/{len(rows)} ok for sm_90; {len(spills)} with register spills")
        return 1 if bad else 0
    if not (args.parity or args.bench or args.sweep):
        args.parity = args.bench = True

    import ablate.kernels  # noqa: F401  (registers every op and its fast paths)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if (args.bench or args.sweep) and device.type != "cuda":
        p.error("--bench / --sweep time CUDA kernels; use --parity alone on CPU")
    cases = default_cases()
    if args.ops:
        wanted = set(args.ops.split(","))
        cases = [c for c in cases if c.name in wanted or c.op in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log_file = open(args.out / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    info = environment(args)
    (args.out / "env.json").write_text(json.dumps(info, indent=2))
    log(f"{info['device']} torch {info['torch']} triton {info['triton']} mamba_ssm {info['mamba_ssm']} causal_conv1d {info['causal_conv1d']}")
    if args.budget_s > 0:
        _DEADLINE[0] = t_start + args.budget_s
    par_rows, bench_rows, sweep_rows = [], [], []
    # case by case (parity, then timing), so a time budget cuts whole ops at the end of the list
    # rather than every op's timings
    swept = {c.name for c in cases} & SWEPT_OPS
    for case in cases:
        if args.parity:
            par_rows += parity([case], device, args.seed, log)
            (args.out / "parity.json").write_text(json.dumps(par_rows, indent=1))
            (args.out / "parity.md").write_text(_md_parity(par_rows))
        if args.bench:
            bench_rows += bench([case], device, args.seed, log)
            (args.out / "bench.json").write_text(json.dumps(bench_rows, indent=1))
            (args.out / "bench.md").write_text(_md_bench(bench_rows))
        swept.discard(case.name)
        if args.sweep and not swept and not sweep_rows:  # right after the ops it tunes
            sweep_rows = sweep(cases, device, args.seed, log) or [{}]
            (args.out / "sweep.json").write_text(json.dumps(sweep_rows, indent=1))
    sweep_rows = [r for r in sweep_rows if r]

    # the compact table, last
    print()
    if par_rows:
        checked = [r for r in par_rows if r["status"] in ("PASS", "FAIL")]
        fails = [r for r in checked if r["status"] == "FAIL"]
        skipped = sum(r["status"] == "SKIP" for r in par_rows)
        print(f"PARITY {len(checked) - len(fails)}/{len(checked)} PASS" + (f", {skipped} skipped (time budget)" if skipped else ""))
        by = {}
        for r in checked:
            k = (r["op"], r["impl"], r["dtype"])
            by[k] = max(by.get(k, 0.0), r["worst"])
        for (op, impl, dt), worst in sorted(by.items()):
            print(f"  {op:16} {impl:13} {dt:8} worst {worst:.1e}")
        for r in fails[:10]:
            print(f"  FAIL {r['op']} {r['impl']} {r['dtype']} {r['variant']} {r['shape']}: {r['worst']:.2e} {r['error'] or ''}")
    if bench_rows:
        print("BENCH (bf16, median ms; % roof = floor time / measured, floor = max(bytes / 3.0 TB/s, flops / 772 TFLOP/s))")
        for r in bench_rows:
            if r["impl"] == "anchor":
                print(f"{r['op']:16} {'anchor':13} fwd {_fmt(r['fwd_ms'], '8.3f')} ms | f+b {_fmt(r['fwd_bwd_ms'], '8.3f')} ms  {r['note']}")
            else:
                print(_bench_line(r) + (f" [{r['shape']}]" if r.get("note") else ""))
    if sweep_rows:
        print("SWEEP (best first)")
        for key in ("fwd", "fwd_bwd"):
            done = sorted((r for r in sweep_rows if r.get(f"{key}_ms")), key=lambda r: (r["op"], r[f"{key}_ms"]))
            for r in done[:12]:
                print(f"  {key:7} {r['op']:14} {r['config']:28} {r[f'{key}_ms']:.3f} ms")
    log_file.close()
    return 1 if any(r["status"] == "FAIL" for r in par_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
