"""Experiment: the decode step as k independent row groups, run one after the other or on k streams.

Rows of a decode step do not depend on each other, so k row groups (cache row views) can run
concurrently: one group's bandwidth-bound kernels (state update, attention) beside another's
latency-bound ones (small GEMMs, norms, launches). The cost is each weight read k times (from L2 if
the groups stay close in time).
"""

from __future__ import annotations

import sys

import torch

from timing import events_ms, graph_of, paper_model, prefill_one_row


def run(name, groups_list=(1, 2, 4), batch=128, keys=8192):
    from ablate.model.elementwise import fused_elementwise

    model, cache, seed, floor = paper_model(name, batch, keys + 512)
    prefill_one_row(model, cache, seed, torch.randint(0, model.config.vocab_size, (1, keys), device="cuda"))
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

        return graph_of(body)

    rows = []
    for rep in range(2):
        for k in groups_list:
            for parallel in ((False,) if k == 1 else (False, True)):
                g = build(k, parallel)
                ms = events_ms(g.replay, reps=40)
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
