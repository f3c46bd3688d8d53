"""Experiment: the decode step as k independent row groups, run one after the other or on k streams.

Rows of a decode step do not depend on each other, so k row groups (cache row views) can run
concurrently: one group's bandwidth-bound kernels (state update, attention) beside another's
latency-bound ones (small GEMMs, norms, launches). The cost is each weight read k times (from L2 if
the groups stay close in time).
"""

from __future__ import annotations

import statistics
import sys

import torch


def events_ms(fn, reps=40):
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts[5:])


def run(name, groups_list=(1, 2, 4), batch=128, keys=8192):
    from ablate.bench.kernels import HBM_BYTES_PER_S
    from ablate.bench.targets import resolve_target
    from ablate.bench.throughput import weight_bytes
    from ablate.model.cache import AblateCache, meta_seed
    from ablate.model.elementwise import fused_elementwise

    model = resolve_target(name, "paper").build(torch.bfloat16, "cuda")
    cache = AblateCache.for_model(model, batch, keys + 512, torch.bfloat16, "cuda")
    seed = meta_seed(model, torch.bfloat16, "cuda") if model.config.num_meta_tokens else None
    floor = (weight_bytes(model) + cache.nbytes()) / HBM_BYTES_PER_S * 1e3
    prompts = torch.randint(0, model.config.vocab_size, (1, keys), device="cuda")
    with torch.no_grad():
        cache.reset(seed)
        view = cache.rows(0, 1)
        model(input_ids=prompts, past_key_values=view, logits_to_keep=1)
        cache.adopt(view)
        cache.fill_rows_from(1)
    cache.static_decode = True
    tokens = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
    print(f"### {name}: floor {floor:.3f} ms\n")

    def build(k, parallel, priority=0):
        size = batch // k
        views = [cache.rows(i * size, (i + 1) * size) for i in range(k)]
        for v in views:
            v.static_decode = True
        toks = [tokens[i * size:(i + 1) * size] for i in range(k)]

        @torch.no_grad()
        def body_one(i):
            with fused_elementwise(True):
                logits = model(input_ids=toks[i], past_key_values=views[i], logits_to_keep=1).logits[:, -1]
            toks[i].copy_(logits.argmax(-1, keepdim=True))

        streams = [torch.cuda.Stream(priority=priority if i == 0 else 0) for i in range(k)]

        def body():
            if not parallel:
                for i in range(k):
                    body_one(i)
                return
            cur = torch.cuda.current_stream()
            for i, s in enumerate(streams):
                s.wait_stream(cur)
                with torch.cuda.stream(s):
                    body_one(i)
            for s in streams:
                cur.wait_stream(s)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
            body()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        return g

    rows = []
    for rep in range(2):
        for k in groups_list:
            for parallel in ((False,) if k == 1 else (False, True)):
                g = build(k, parallel)
                ms = events_ms(g.replay)
                rows.append((k, parallel, rep, ms))
                del g
    for k in groups_list:
        for parallel in ((False,) if k == 1 else (False, True)):
            ts = [ms for kk, p, _, ms in rows if kk == k and p == parallel]
            label = f"{k} group{'s' if k > 1 else ''} of {batch // k} rows, {'on ' + str(k) + ' streams' if parallel else 'one stream'}"
            print(f"- {label}: " + " / ".join(f"{t:.3f}" for t in ts) + f" ms ({100 * floor / min(ts):.1f}% of the bound)")
    print(flush=True)
    del model, cache
    torch.cuda.empty_cache()


if __name__ == "__main__":
    groups = tuple(int(g) for g in sys.argv[2].split(",")) if len(sys.argv) > 2 else (1, 2, 4)
    for name in sys.argv[1].split(","):
        run(name, groups)
