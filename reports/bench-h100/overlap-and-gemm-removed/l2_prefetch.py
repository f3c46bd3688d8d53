"""Experiment: prefetch the next projection's weight into L2 while the GPU's HBM is idle.

Part 1 (isolated): a cuBLAS decode GEMM with its weight cold, prefetched, or hot.
Part 2 (in the model): the graph-replayed decode step with forward hooks that prefetch the next
Linear's weight, side by side with none, A B A B.
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from timing import events_ms, graph_of, paper_model, prefill_one_row

@triton.jit
def _prefetch_kernel(ptr, nbytes, sink_ptr, CHUNK: tl.constexpr, LANES: tl.constexpr, MODE: tl.constexpr, LINE: tl.constexpr):
    pid = tl.program_id(0)
    offs = (pid * LANES + tl.arange(0, LANES)).to(tl.int64) * CHUNK
    if MODE == 2:
        acc = tl.zeros([LANES], dtype=tl.int32)
        for i in tl.static_range(CHUNK // LINE):
            o = offs + i * LINE
            size = tl.where(o < nbytes, LINE, 0).to(tl.int32)
            acc += tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }",
                "=r,l,r", [ptr + o, size], dtype=tl.int32, is_pure=False, pack=1)
    else:
        size = tl.minimum(nbytes - offs, CHUNK).to(tl.int32)
        if MODE == 0:
            acc = tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
                "=r,l,r", [ptr + offs, size], dtype=tl.int32, is_pure=False, pack=1)
        else:
            acc = tl.inline_asm_elementwise(
                "{ .reg .pred p; .reg .b64 pol; setp.gt.s32 p, $2, 0; createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
                "@p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; mov.u32 $0, 0; }",
                "=r,l,r", [ptr + offs, size], dtype=tl.int32, is_pure=False, pack=1)
    total = tl.sum(acc, 0)
    tl.store(sink_ptr + pid, total, mask=total != 0)


SINK = {}


def prefetch_l2(t: torch.Tensor, mode: int = 1, chunk: int = 16384, lanes: int = 32, cap: int | None = None):
    b = t.detach().reshape(-1).view(torch.uint8)
    n = b.numel() if cap is None else min(b.numel(), cap)
    if mode == 2:
        chunk = max(chunk, 128)
    grid = triton.cdiv(n, chunk * lanes)
    sink = SINK.get(t.device)
    if sink is None or sink.numel() < grid:
        sink = SINK[t.device] = torch.zeros(max(grid, 4096), dtype=torch.int32, device=t.device)
    _prefetch_kernel[(grid,)](b, n, sink, CHUNK=chunk, LANES=lanes, MODE=mode, LINE=128, num_warps=1)


def part1():
    """Per GEMM shape: L layers of [flush-ish streaming kernel, (prefetch W), sleep, GEMM] replayed."""
    print("## Part 1: GEMM after a 64 MB streaming pass; weight cold / prefetched (modes) / hot\n")
    print("| out x in | MB | cold µs | bulk µs | bulk evict_last µs | line evict_last µs | hot µs |")
    print("|---|---|---|---|---|---|---|")
    bf = dict(device="cuda", dtype=torch.bfloat16)
    L = 16
    junk = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    x = torch.randn(128, 4096, **bf)
    for n, k in [(8512, 2048), (2048, 4096), (4096, 1024), (2048, 1024), (1024, 2048), (11008, 2048), (2048, 5504)]:
        ws = [torch.randn(n, k, **bf) for _ in range(L)]
        xk = x[:, :k].contiguous()
        outs = {}
        for label, mode in [("cold", None), ("bulk", 0), ("bulk_el", 1), ("line", 2), ("hot", "hot")]:
            def body(mode=mode):
                for w in ws:
                    junk.add_(1)  # 64 MB read + write: evicts L2
                    if mode == "hot":
                        torch.nn.functional.linear(xk, w)
                    elif mode is not None:
                        prefetch_l2(w, mode)
                    torch.cuda._sleep(20000)  # ~10 µs of idle HBM
                    torch.nn.functional.linear(xk, w)

            def base():
                for w in ws:
                    junk.add_(1)
                    torch.cuda._sleep(20000)

            def base_hot():
                for w in ws:
                    junk.add_(1)
                    torch.nn.functional.linear(xk, w)
                    torch.cuda._sleep(20000)

            g = graph_of(body)
            gb = graph_of(base_hot if mode == "hot" else base)
            if mode is not None and mode != "hot":
                gp = graph_of(lambda: [(junk.add_(1), prefetch_l2(w, mode), torch.cuda._sleep(20000)) for w in ws])
                gb = gp
            t = events_ms(g.replay, reps=30)
            tb = events_ms(gb.replay, reps=30)
            outs[label] = (t - tb) / L * 1e3
        mb = n * k * 2 / 1e6
        print(f"| {n} x {k} | {mb:.1f} | {outs['cold']:.1f} | {outs['bulk']:.1f} | {outs['bulk_el']:.1f} | {outs['line']:.1f} | {outs['hot']:.1f} |")
        del ws
    print()


def part2(variants, caps_mb=(None, 24), modes=(1,)):
    from ablate.model.static_decode import StaticGreedyDecoder

    print("## Part 2: decode step (graph replay, ms, median of 40), prefetching the next Linear's weight\n")
    for name in variants:
        model, cache, seed, floor = paper_model(name, 128, 8192 + 64)
        prompts = torch.randint(0, model.config.vocab_size, (1, 8192), device="cuda")

        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        order = []
        hs = [m.register_forward_pre_hook(lambda m, a: order.append(m) if m not in order else None) for m in linears]
        with torch.no_grad():
            cache.reset(seed)
            dec = StaticGreedyDecoder(model, cache, use_graph=False, fuse=True)
            dec.step()
        for h in hs:
            h.remove()

        def timed(setup_hooks):
            hooks = setup_hooks()
            cache.reset(seed)
            dec = StaticGreedyDecoder(model, cache, use_graph=True)
            prefill_one_row(model, cache, seed, prompts)
            ms = events_ms(dec.step, reps=45)
            for h in hooks:
                h.remove()
            del dec
            return ms

        def none():
            return []

        def nxt(mode, cap, when="pre"):
            def setup():
                hooks = []
                for i, m in enumerate(order):
                    target = order[(i + 1) % len(order)].weight
                    if cap is None and target.numel() * 2 > (48 << 20):
                        continue
                    fn = (lambda mod, *a, t=target: prefetch_l2(t, mode, cap=cap))
                    hooks.append(m.register_forward_pre_hook(fn) if when == "pre" else m.register_forward_hook(fn))
                return hooks
            return setup

        configs = [("none", none)]
        for mode in modes:
            for cap in caps_mb:
                for when in ("pre", "post"):
                    configs.append((f"mode{mode} cap{cap} {when}", nxt(mode, None if cap is None else cap << 20, when)))
        res = {label: [] for label, _ in configs}
        for _ in range(2):
            for label, setup in configs:
                res[label].append(timed(setup))
        print(f"### {name}: floor {floor:.3f} ms, {len(order)} Linears\n")
        for label, ts in res.items():
            print(f"- {label}: " + " / ".join(f"{t:.3f}" for t in ts) + f" ms  ({100 * floor / min(ts):.1f}% of bound at best)")
        print(flush=True)
        del model, cache
        torch.cuda.empty_cache()


if __name__ == "__main__":
    what = sys.argv[1]
    if what in ("1", "all"):
        part1()
    if what in ("2", "all"):
        part2(sys.argv[2].split(","))
