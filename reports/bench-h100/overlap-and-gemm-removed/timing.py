"""What the experiment scripts of this folder share: timing, graph capture, a paper-scale model with
a batch-128 cache whose rows copy one prefilled 8k prompt (as ``ablate.bench.decode_profile`` does)."""

from __future__ import annotations

import torch


def events_ms(fn, reps: int) -> float:
    """Median ms of ``fn`` by CUDA events over ``reps`` calls, the first five left out (warm-up)."""
    from ablate.bench.fastpaths import time_ms

    return time_ms(fn, warmup=5, rep=reps - 5)


def graph_of(fn, warmup: int = 2) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, after ``warmup`` calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def paper_model(name: str, batch: int, capacity: int):
    """(model, cache, meta seed or None, bandwidth floor of a decode step in ms) at the paper's scale, bf16."""
    from ablate.bench.kernels import HBM_BYTES_PER_S
    from ablate.bench.targets import resolve_target
    from ablate.bench.throughput import weight_bytes
    from ablate.model.cache import AblateCache, meta_seed

    model = resolve_target(name, "paper").build(torch.bfloat16, "cuda")
    cache = AblateCache.for_model(model, batch, capacity, torch.bfloat16, "cuda")
    seed = meta_seed(model, torch.bfloat16, "cuda") if model.config.num_meta_tokens else None
    floor = (weight_bytes(model) + cache.nbytes()) / HBM_BYTES_PER_S * 1e3
    return model, cache, seed, floor


@torch.no_grad()
def prefill_one_row(model, cache, seed, prompt: torch.Tensor) -> None:
    """Reset the cache, prefill its first row with ``prompt`` (1, keys), copy that row into the others."""
    cache.reset(seed)
    view = cache.rows(0, 1)
    model(input_ids=prompt, past_key_values=view, logits_to_keep=1)
    cache.adopt(view)
    cache.fill_rows_from(1)
