"""Prefill and decode throughput, peak memory and cache size of one model, with the paper's protocol.

Protocol (Hymba, Table 1 / Table 3): random prompts of ``prompt_len`` tokens, batch ``batch`` (halved
until it fits when memory runs out, and the batch used is reported), greedy decoding in ``dtype``.

- prefill tokens/s = sequences x prompt_len / prefill time. Sequences are prefilled ``prefill_rows``
  at a time into row slices of the one batch cache (halved on OOM); the first chunk (which pays for
  kernel compilation and autotuning) is left out of the rate whenever the batch has more rows, so
  at least two chunks run. After ``prefill_budget_s`` the remaining rows are filled with copies of
  prefilled rows: decode cost does not depend on the cache's contents, and this keeps a slow
  prefill kernel from eating the run.
  ``prefilled_rows`` says how many rows were really prefilled.
- decode tokens/s = batch / median time of one decode step, over ``gen_tokens`` steps after
  ``warmup_steps``, timed with CUDA events. A step is one replay of a CUDA graph of the whole model
  over the static cache (``ablate.model.static_decode``), or the same step run eagerly where capture
  fails (``graph`` false, ``graph_error`` says why) or on CPU. On GPU the step's small elementwise
  functions are compiled into one kernel each (``fuse``, ``ablate.model.elementwise``; ``fused`` says so).
- decode bound: a step must read every weight and the whole cache once; at ``bandwidth`` bytes/s
  (H100 HBM3: ~3.0e12, shared/gpu-anchors.md) that takes (weight bytes + cache bytes) / bandwidth,
  so the bound is batch / that time. ``decode_bound_fraction`` is the share of it reached.
- cache: bytes the cache holds (``AblateCache.nbytes``) for the tokens it was allocated for
  (prompt + warm-up + timed steps), per sequence, beside the analytic count for the same tokens.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ablate.bench.accounting import cache_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HBM_BYTES_PER_S = 3.0e12  # H100 device-to-device copy, shared/gpu-anchors.md


@dataclass
class Protocol:
    prompt_len: int = 8192
    gen_tokens: int = 64
    batch: int = 128
    dtype: str = "bf16"
    device: str = "cuda"
    warmup_steps: int = 2
    prefill_rows: int = 8
    prefill_budget_s: float = 60.0
    graphs: bool = True
    fuse: bool = True  # the decode step's elementwise functions compiled (ablate.model.elementwise); CUDA only
    bandwidth: float = HBM_BYTES_PER_S
    seed: int = 0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: unknown {self.dtype!r}; one of {', '.join(DTYPES)}")
        for name in ("prompt_len", "gen_tokens", "batch", "prefill_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class BenchOOM(RuntimeError):
    """Out of memory even at batch 1."""


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weight_bytes(model) -> int:
    """Bytes of every distinct parameter (tied embeddings once): what one decode step reads."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_bound(weights: int, cache: int, batch: int, bandwidth: float = HBM_BYTES_PER_S) -> float:
    """Tokens/s if a decode step only had to read the weights and the cache once at ``bandwidth``."""
    return batch / ((weights + cache) / bandwidth)


def with_batch_halving(run, batch: int, on_oom=None):
    """``run(batch)``, halving the batch after each out-of-memory until it fits. Returns
    (result, batches that ran out of memory)."""
    failed = []
    while True:
        try:
            return run(batch), failed
        except Exception as e:  # noqa: BLE001 - only OOM is retried
            if not is_oom(e):
                raise
            failed.append(batch)
        free_memory()  # outside the except block, so the traceback's tensors are gone
        if on_oom is not None:
            on_oom(batch)
        if batch == 1:
            raise BenchOOM("out of memory at batch 1")
        batch //= 2


def random_prompts(batch: int, length: int, vocab: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


class StepTimer:
    """Per-step wall times: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


# ---- our models ---------------------------------------------------------------------------------
def bench_ablate(model, protocol: Protocol, progress=None) -> dict:
    """Measure an AblateForCausalLM (already on the device, in the dtype) with the protocol,
    halving the batch on OOM. ``progress(message)`` is told what happens."""
    result, failed = with_batch_halving(lambda b: _bench_ablate_once(model, protocol, b, progress), protocol.batch, on_oom=lambda b: progress and progress(f"out of memory at batch {b}: halving"))
    result["oom_batches"] = failed
    return result


@torch.no_grad()
def _bench_ablate_once(model, protocol: Protocol, batch: int, progress=None) -> dict:
    from ablate.model.cache import AblateCache, meta_seed
    from ablate.model.static_decode import StaticGreedyDecoder

    say = progress or (lambda message: None)
    config = model.config
    device = torch.device(protocol.device)
    dtype = protocol.torch_dtype
    P, G, W = protocol.prompt_len, protocol.gen_tokens, protocol.warmup_steps
    capacity = P + W + G  # tokens the cache will have processed after the meta tokens
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prompts = random_prompts(batch, P, config.vocab_size, protocol.seed, device)
    cache = AblateCache.for_model(model, batch, capacity, dtype, device)
    seed = meta_seed(model, dtype, device) if config.num_meta_tokens else None

    decoder, graph_error = None, None
    if protocol.graphs and device.type == "cuda":
        say(f"batch {batch}: capturing the decode step")
        try:
            decoder = StaticGreedyDecoder(model, cache, use_graph=True, fuse=protocol.fuse)
        except Exception as e:  # noqa: BLE001 - an OOM is the caller's; anything else falls back to eager
            if is_oom(e):
                raise
            graph_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        cache.reset(seed)
    if decoder is None:
        decoder = StaticGreedyDecoder(model, cache, use_graph=False, fuse=protocol.fuse and device.type == "cuda")

    say(f"batch {batch}: prefill {P} tokens")
    chunks, first_tokens, rows = _prefill(model, cache, seed, prompts, protocol, say)
    done = sum(n for n, _ in chunks)
    if done < batch:
        cache.fill_rows_from(done)
        first_tokens[done:] = first_tokens[torch.arange(done, batch, device=device) % done]
    timed = chunks[1:] if len(chunks) > 1 else chunks
    prefill_rate = P * sum(n for n, _ in timed) / sum(t for _, t in timed)

    say(f"batch {batch}: decode {W} + {G} steps")
    decoder.start(first_tokens)
    for _ in range(W):
        decoder.step()
    sync(device)
    timer = StepTimer(device)
    timer.mark()
    for _ in range(G):
        decoder.step()
        timer.mark()
    steps = timer.intervals()
    step_s = statistics.median(steps)

    held = cache.nbytes()
    elem = torch.finfo(dtype).bits // 8
    analytic = cache_bytes(config, capacity, elem).total
    weights = weight_bytes(model)
    bound = decode_bound(weights, held, batch, protocol.bandwidth)
    decode_rate = batch / step_s
    return {
        "protocol": _protocol_dict(protocol, batch),
        "prefill_tokens_per_s": prefill_rate,
        "decode_tokens_per_s": decode_rate,
        "decode_tokens_per_s_mean": batch * len(steps) / sum(steps),
        "decode_bound_tokens_per_s": bound,
        "decode_bound_fraction": decode_rate / bound,
        "decode_step_ms": step_s * 1e3,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "cache_mb_measured": held / batch / 1e6,
        "cache_mb_analytic": analytic / 1e6,
        "cache_exact": held == analytic * batch,
        "cache_tokens": capacity,
        "cache_mb_prompt_fp16": cache_bytes(config, P).mb,
        "weight_bytes": weights,
        "cache_bytes": held,
        "prefill_rows": rows,
        "prefilled_rows": done,
        "graph": decoder.graph is not None,
        "graph_error": graph_error,
        "fused": decoder.fuse,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _prefill(model, cache, seed, prompts, protocol: Protocol, say):
    """Prefill row chunks into the batch cache; on OOM start over with half the rows per chunk.
    Returns ([(rows, seconds), ...], first generated tokens (B, 1), rows per chunk)."""
    batch = prompts.shape[0]
    rows = min(protocol.prefill_rows, batch)
    while True:
        try:
            return _prefill_chunks(model, cache, prompts, rows, protocol, say) + (rows,)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e) or rows == 1:
                raise
        free_memory()
        say(f"prefill out of memory at {rows} rows per chunk: halving")
        rows //= 2
        cache.reset(seed)


def _prefill_chunks(model, cache, prompts, rows: int, protocol: Protocol, say):
    batch, device = prompts.shape[0], prompts.device
    first = torch.zeros(batch, 1, dtype=torch.long, device=device)
    chunks, done, began, view = [], 0, time.perf_counter(), None
    while done < batch:
        n = min(rows, batch - done)
        view = cache.rows(done, done + n)
        sync(device)
        t0 = time.perf_counter()
        logits = model(input_ids=prompts[done : done + n], past_key_values=view, logits_to_keep=1).logits[:, -1]
        first[done : done + n] = logits.argmax(-1, keepdim=True)
        sync(device)
        chunks.append((n, time.perf_counter() - t0))
        done += n
        elapsed = time.perf_counter() - began
        # never stop after the first chunk alone: it pays for compilation and autotuning (15-25 s
        # of FlexAttention compiles in a model's first 8 rows on the H100), so the rate needs a second
        if done < batch and elapsed > protocol.prefill_budget_s and len(chunks) >= 2:
            say(f"prefill budget spent after {done} rows: copying them into the other {batch - done}")
            break
    cache.adopt(view)
    return chunks, first


def _protocol_dict(protocol: Protocol, batch: int) -> dict:
    p = asdict(protocol)
    return {
        "prompt_len": p["prompt_len"],
        "gen_tokens": p["gen_tokens"],
        "batch_requested": p["batch"],
        "batch": batch,
        "dtype": p["dtype"],
        "device": p["device"],
        "warmup_steps": p["warmup_steps"],
        "greedy": True,
        "bandwidth_bytes_per_s": p["bandwidth"],
        "decode_timing": "median of per-step CUDA-event times" if p["device"].startswith("cuda") else "median of per-step wall times",
    }
