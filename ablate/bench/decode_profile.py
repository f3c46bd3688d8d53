"""Where a decode step's time goes: the GPU kernels of one step of a paper-scale variant.

    python -m ablate.bench.decode_profile VARIANT [VARIANT ...] [--batch 128] [--keys 8192] [--op decode_attention] [--backends auto,reference]

For each variant and each backend of one op (``ABLATE_<OP>_BACKEND``; decode attention unless
``--op`` names another, e.g. ``gate_up_silu``; a backend listed twice runs twice, alternated; the
model and cache are built once per variant, so every backend's step reads the same memory): one row is
prefilled with ``keys`` random tokens and copied into every row, as ``ablate bench`` does when its
prefill budget runs out (``--prefill-rows``: more rows prefilled, 8 per forward; SDPA has picked a
different kernel for the same step after a full prefill). The step runs as one CUDA-graph replay
(median ms with CUDA events), then eagerly under torch.profiler (kernels grouped by name, GPU ms per
step), beside the bandwidth floor of the step (weights + cache bytes at 3.0 TB/s).
"""

from __future__ import annotations

import os
import statistics

import torch
import typer

from ablate.bench.kernels import HBM_BYTES_PER_S


def profile_variant(name: str, batch: int, keys: int, backend: str, op: str = "decode_attention", **kwargs) -> dict:
    """One variant's decode step with ``op`` on ``backend`` (auto | reference | triton); the
    environment is as it was afterwards."""
    return profile_backends(name, batch, keys, [backend], op, **kwargs)[0]


def profile_backends(name: str, batch: int, keys: int, backends: list[str], op: str = "decode_attention", scale: str = "paper",
                     device: str = "cuda", prefill_rows: int = 1, graph_steps: int = 10, **kwargs) -> list[dict]:
    """The decode step with ``op`` on each of ``backends`` in turn, on one model and cache built once
    (so that where the weights and the state landed in memory is the same for every backend)."""
    import ablate.model.lm  # noqa: F401 - registers every op of the model
    import ablate.model.static_decode  # noqa: F401 - and the greedy pick
    from ablate.bench.targets import resolve_target
    from ablate.kernels.backend import OPS
    from ablate.model.cache import AblateCache, meta_seed

    if op not in OPS:
        raise typer.BadParameter(f"unknown op {op!r}; known: {', '.join(sorted(OPS))}", param_hint="--op")
    model = resolve_target(name, scale).build(torch.bfloat16, device)
    cache = AblateCache.for_model(model, batch, keys + max(64, graph_steps + 16), torch.bfloat16, device)
    seed = meta_seed(model, torch.bfloat16, device) if model.config.num_meta_tokens else None
    rows = max(1, min(prefill_rows, batch))
    prompts = torch.randint(0, model.config.vocab_size, (rows, keys), device=device)

    @torch.no_grad()
    def at_the_end():
        cache.reset(seed)
        for start in range(0, rows, 8):
            view = cache.rows(start, min(start + 8, rows))
            model(input_ids=prompts[start : start + 8], past_key_values=view, logits_to_keep=1)
        cache.adopt(view)
        cache.fill_rows_from(rows)

    var = f"ABLATE_{op.upper()}_BACKEND"
    saved = os.environ.get(var)
    results = []
    try:
        for backend in backends:
            os.environ[var] = backend
            r = _profile(model, cache, seed, at_the_end, device == "cuda", graph_steps, **kwargs)
            results.append({"variant": name, "backend": backend, **r})
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved
    return results


def _profile(model, cache, seed, at_the_end, cuda: bool, graph_steps: int, steps: int = 3, top: int = 12) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from ablate.bench.throughput import weight_bytes
    from ablate.model.static_decode import StaticGreedyDecoder

    graph_ms = None
    if cuda:
        cache.reset(seed)  # capture on a fresh (seeded) cache, as ablate bench does
        graph = StaticGreedyDecoder(model, cache, use_graph=True)
        at_the_end()
        times = []
        for _ in range(graph_steps + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        graph_ms = statistics.median(times[3:])
        del graph

    at_the_end()
    eager = StaticGreedyDecoder(model, cache, use_graph=False, fuse=cuda)
    for _ in range(3):
        eager.step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eager.step()
        sync()
    kernels = sorted(
        ((e.key, (e.device_time_total if cuda else e.self_cpu_time_total) / 1e3 / steps, e.count // steps)
         for e in prof.key_averages() if (e.device_time_total if cuda else e.self_cpu_time_total) > 0),
        key=lambda r: -r[1],
    )
    floor_ms = (weight_bytes(model) + cache.nbytes()) / HBM_BYTES_PER_S * 1e3
    return {
        "graph_ms": graph_ms, "floor_ms": floor_ms,
        "eager_gpu_ms": sum(ms for _, ms, _ in kernels),
        "kernels": [{"name": k[:90], "ms_per_step": ms, "calls_per_step": n} for k, ms, n in kernels[:top]],
    }


def main(
    variants: list[str] = typer.Argument(..., help="paper-scale variants to profile"),
    batch: int = typer.Option(128, "--batch"),
    keys: int = typer.Option(8192, "--keys", help="tokens already in the cache"),
    op: str = typer.Option("decode_attention", "--op", help="the op whose backends are compared (ABLATE_<OP>_BACKEND)"),
    backends: str = typer.Option("auto,reference", "--backends", help="the op's backends, comma-separated, in the order run"),
    scale: str = typer.Option("paper", "--scale"),
    device: str = typer.Option("cuda", "--device", help="cuda | cpu (cpu: a smoke run, CPU op times, no graph)"),
    prefill_rows: int = typer.Option(1, "--prefill-rows", help="rows prefilled with their own prompts (8 per forward); the rest copy them"),
    graph_steps: int = typer.Option(10, "--graph-steps", help="graph replays timed (after 3 more), their median reported"),
):
    """Profile one decode step per variant and backend (see module docstring)."""
    for name in variants:
        results = profile_backends(name, batch, keys, backends.split(","), op, scale=scale, device=device, prefill_rows=prefill_rows,
                                   graph_steps=graph_steps)
        if device == "cuda":
            torch.cuda.empty_cache()  # the variant's weights and cache went with the call
        for r, backend in zip(results, backends.split(",")):
            graph = f"graph step {r['graph_ms']:.3f} ms ({100 * r['floor_ms'] / r['graph_ms']:.1f}% of the bound), " if r["graph_ms"] else ""
            print(f"\n## {name}, {op.replace('_', ' ')} {backend}: {graph}floor {r['floor_ms']:.3f} ms; eager kernel time {r['eager_gpu_ms']:.3f} ms")
            for k in r["kernels"]:
                print(f"  {k['ms_per_step']:8.3f} ms  x{k['calls_per_step']:<4} {k['name']}")


if __name__ == "__main__":
    typer.run(main)
