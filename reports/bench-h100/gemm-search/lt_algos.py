"""Experiment: every algorithm cuBLASLt's heuristic offers for the decode projections at batch 128
(up to 64 per shape), each timed with cold weights, against the one PyTorch runs (``F.linear``).
``--search``: beyond the heuristic, the configurations of its first algorithm (every tile it
supports, split-K 1-8 with each reduction scheme, CTA swizzling, custom options) that
``cublasLtMatmulAlgoCheck`` accepts, timed briefly, the fastest ten again in full.

PyTorch asks cuBLAS(Lt) for one algorithm and TunableOp, on CUDA, registers only that default, so no
library here times the others. cuBLASLt is called through ctypes: y = x Wᵀ as column-major
yᵀ = W xᵀ (A = W transposed, B = x), bf16 in and out, fp32 compute, as PyTorch does."""

from __future__ import annotations

import ctypes as C
import sys

import torch
import torch.nn.functional as F

from problems import BATCH, SHAPES, cold_problem, per_gemm_us

WORKSPACE = 32 * 2**20
R_16BF, R_32F, COMPUTE_32F = 14, 0, 68
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB = 3, 4
PREF_MAX_WORKSPACE = 1
CAP_SPLITK, CAP_REDUCTION_MASK, CAP_SWIZZLE, CAP_TILE_IDS, CAP_CUSTOM_MAX = 0, 1, 2, 6, 7
CFG = {"algo": 0, "tile": 1, "splitk": 2, "reduction": 3, "swizzle": 4, "custom": 5, "stages": 6}


class Algo(C.Structure):
    _fields_ = [("data", C.c_uint64 * 8)]


class Heuristic(C.Structure):
    _fields_ = [("algo", Algo), ("workspace", C.c_size_t), ("state", C.c_int), ("waves", C.c_float), ("reserved", C.c_int * 4)]


def _lib():
    torch.zeros(1, device="cuda") @ torch.zeros(1, device="cuda")  # loads cuBLAS(Lt) into the process
    for name in ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"):
        try:
            return C.CDLL(name)
        except OSError:
            pass
    import glob
    import os

    site = os.path.dirname(os.path.dirname(torch.__file__))
    for path in sorted(glob.glob(f"{site}/nvidia/**/libcublasLt.so*", recursive=True)):
        return C.CDLL(path)
    raise SystemExit("libcublasLt not found")


LT = _lib()


def ok(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: cublasStatus {status}")


class Gemm:
    """One (N x K) weight shape at batch M: descriptors, the heuristic's algorithms, a launcher."""

    def __init__(self, n: int, k: int, m: int):
        self.n, self.k, self.m = n, k, m
        self.handle = C.c_void_p()
        ok(LT.cublasLtCreate(C.byref(self.handle)), "create")
        self.desc = C.c_void_p()
        ok(LT.cublasLtMatmulDescCreate(C.byref(self.desc), COMPUTE_32F, R_32F), "desc")
        for attr, op in ((DESC_TRANSA, OP_T), (DESC_TRANSB, OP_N)):
            v = C.c_int32(op)
            ok(LT.cublasLtMatmulDescSetAttribute(self.desc, attr, C.byref(v), 4), "trans")
        self.a, self.b, self.c = C.c_void_p(), C.c_void_p(), C.c_void_p()
        ok(LT.cublasLtMatrixLayoutCreate(C.byref(self.a), R_16BF, C.c_uint64(k), C.c_uint64(n), C.c_int64(k)), "A")
        ok(LT.cublasLtMatrixLayoutCreate(C.byref(self.b), R_16BF, C.c_uint64(k), C.c_uint64(m), C.c_int64(k)), "B")
        ok(LT.cublasLtMatrixLayoutCreate(C.byref(self.c), R_16BF, C.c_uint64(n), C.c_uint64(m), C.c_int64(n)), "C")
        self.pref = C.c_void_p()
        ok(LT.cublasLtMatmulPreferenceCreate(C.byref(self.pref)), "pref")
        ws = C.c_uint64(WORKSPACE)
        ok(LT.cublasLtMatmulPreferenceSetAttribute(self.pref, PREF_MAX_WORKSPACE, C.byref(ws), 8), "pref ws")
        self.workspace = torch.empty(WORKSPACE, dtype=torch.uint8, device="cuda")
        self.alpha, self.beta = C.c_float(1.0), C.c_float(0.0)

    def algorithms(self, count: int = 64) -> list[Heuristic]:
        res = (Heuristic * count)()
        got = C.c_int()
        ok(LT.cublasLtMatmulAlgoGetHeuristic(self.handle, self.desc, self.a, self.b, self.c, self.c, self.pref,
                                             count, res, C.byref(got)), "heuristic")
        return [res[i] for i in range(got.value) if res[i].state == 0]

    def run(self, h: Heuristic, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
        stream = C.c_void_p(torch.cuda.current_stream().cuda_stream)
        ok(LT.cublasLtMatmul(self.handle, self.desc, C.byref(self.alpha), C.c_void_p(w.data_ptr()), self.a,
                             C.c_void_p(x.data_ptr()), self.b, C.byref(self.beta), C.c_void_p(y.data_ptr()), self.c,
                             C.c_void_p(y.data_ptr()), self.c, C.byref(h.algo), C.c_void_p(self.workspace.data_ptr()),
                             C.c_size_t(WORKSPACE), stream), "matmul")


def _cap(algo: Algo, attr: int) -> list[int]:
    need = C.c_size_t()
    LT.cublasLtMatmulAlgoCapGetAttribute(C.byref(algo), attr, None, 0, C.byref(need))
    buf = (C.c_uint32 * max(1, need.value // 4))()
    ok(LT.cublasLtMatmulAlgoCapGetAttribute(C.byref(algo), attr, buf, C.sizeof(buf), C.byref(need)), f"cap {attr}")
    return list(buf)[: need.value // 4]


def candidates(gemm: Gemm, seed: Heuristic) -> list[Heuristic]:
    """Variations of ``seed`` that cuBLASLt accepts for this problem (``cublasLtMatmulAlgoCheck``)."""
    tiles = _cap(seed.algo, CAP_TILE_IDS) or [config(seed)["tile"]]
    splitk_ok = _cap(seed.algo, CAP_SPLITK)[0]
    reductions = [r for r in (1, 2, 4) if _cap(seed.algo, CAP_REDUCTION_MASK)[0] & r]
    swizzles = range(_cap(seed.algo, CAP_SWIZZLE)[0] + 1)
    customs = range(_cap(seed.algo, CAP_CUSTOM_MAX)[0] + 1)
    found = []
    for tile in tiles:
        for split in ((1, 2, 3, 4, 6, 8) if splitk_ok else (1,)):
            for red in (reductions if split > 1 else [0]):
                for swz in swizzles:
                    for cust in customs:
                        h = Heuristic()
                        C.memmove(C.byref(h.algo), C.byref(seed.algo), C.sizeof(Algo))
                        for attr, v in ((CFG["tile"], tile), (CFG["splitk"], split), (CFG["reduction"], red),
                                        (CFG["swizzle"], swz), (CFG["custom"], cust)):
                            val = C.c_uint32(v)
                            if LT.cublasLtMatmulAlgoConfigSetAttribute(C.byref(h.algo), attr, C.byref(val), 4) != 0:
                                break
                        else:
                            if LT.cublasLtMatmulAlgoCheck(gemm.handle, gemm.desc, gemm.a, gemm.b, gemm.c, gemm.c,
                                                          C.byref(h.algo), C.byref(h)) == 0 and h.workspace <= WORKSPACE:
                                found.append(h)
    return found


def config(h: Heuristic) -> dict:
    out = {}
    for name, attr in CFG.items():
        v, written = C.c_uint32(), C.c_size_t()
        status = LT.cublasLtMatmulAlgoConfigGetAttribute(C.byref(h.algo), attr, C.byref(v), 4, C.byref(written))
        out[name] = v.value if status == 0 else None
    return out


def _problem(n: int, k: int):
    """(MB, weight copies, x, output buffer, F.linear's output in fp32, F.linear's µs, the Gemm)."""
    mb, ws, x = cold_problem(n, k)
    y = torch.empty(BATCH, n, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, ws[0]).float()
    base = per_gemm_us(lambda w: torch.mm(x, w.t(), out=y), ws)
    return mb, ws, x, y, ref, base, Gemm(n, k, BATCH)


def _rel_diff(gemm: "Gemm", h, x, w, y, ref) -> float:
    y.zero_()
    gemm.run(h, x, w, y)
    torch.cuda.synchronize()
    return ((y.float() - ref).abs().max() / ref.abs().max()).item()


def search(shapes) -> None:
    print("| out x in | what | MB | F.linear µs (TB/s) | configurations accepted | best µs (TB/s) | best config | its max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n, k, what in shapes:
        mb, ws, x, y, ref, base, gemm = _problem(n, k)
        pool = candidates(gemm, gemm.algorithms()[0])
        quick = []
        for h in pool:
            try:
                quick.append((per_gemm_us(lambda w, h=h: gemm.run(h, x, w, y), ws, reps=10), h))
            except RuntimeError:
                pass
        final = []
        for _, h in sorted(quick, key=lambda r: r[0])[:10]:
            err = _rel_diff(gemm, h, x, ws[0], y, ref)
            final.append((per_gemm_us(lambda w, h=h: gemm.run(h, x, w, y), ws), err, config(h)))
        t, err, cfg = min(final, key=lambda r: r[0])
        print(f"| {n} x {k} | {what} | {mb:.1f} | {base:.1f} ({mb / base:.2f}) | {len(pool)} ({len(quick)} ran) | {t:.1f} ({mb / t:.2f}) | {cfg} | {err:.1e} |", flush=True)
        for t, err, cfg in sorted(final, key=lambda r: r[0]):
            print(f"<!-- {n}x{k}: {t:.2f} µs err {err:.1e} {cfg} -->")


def main() -> None:
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}, cuBLASLt {LT.cublasLtGetVersion()}")
    print("| out x in | what | MB | F.linear µs (TB/s) | heuristic #0 µs | best µs (TB/s) | best: index, config | algorithms timed | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k, what in SHAPES:
        mb, ws, x, y, ref, base, gemm = _problem(n, k)
        timed, worst = [], 0.0
        for i, h in enumerate(gemm.algorithms()):
            try:
                worst = max(worst, _rel_diff(gemm, h, x, ws[0], y, ref))
                timed.append((per_gemm_us(lambda w, h=h: gemm.run(h, x, w, y), ws), i, config(h)))
            except RuntimeError as e:
                print(f"<!-- {n}x{k} algorithm {i}: {e} -->")
        first = next((t for t, i, _ in timed if i == 0), float("nan"))
        best = min(timed, key=lambda r: r[0])
        print(f"| {n} x {k} | {what} | {mb:.1f} | {base:.1f} ({mb / base:.2f}) | {first:.1f} | {best[0]:.1f} ({mb / best[0]:.2f}) "
              f"| {best[1]}, {best[2]} | {len(timed)} | {worst:.1e} |", flush=True)
        for t, i, cfg in sorted(timed, key=lambda r: r[0])[:5]:
            print(f"<!-- {n}x{k} #{i}: {t:.2f} µs {cfg} -->")


if __name__ == "__main__":
    if "--search" in sys.argv:
        search(SHAPES[:2] + SHAPES[4:])
    else:
        main()
