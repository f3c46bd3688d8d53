"""Launch configurations of the Triton decode attention at the short caches of the paper variants
(sliding-window rings, keys < 4096), batch 128, bf16: (BLOCK_N, warps, stages) x forced key splits,
each timed as a CUDA-graph replay over copies of the cache larger than L2 together (median µs per
call; ``python -m ablate.bench.decode_attention`` times eager calls, whose launch overhead is the size
of these kernels), against the default configuration and SDPA. Prints the five fastest per shape."""

from __future__ import annotations

import itertools
import math
import os

import torch

from ablate.bench.decode_attention import attention_shapes, inputs
from ablate.bench.fastpaths import time_ms
from ablate.bench.kernels import HBM_BYTES_PER_S
from ablate.model.decode import decode_attention


def timed(q, ks, vs, spec, backend="triton") -> float:
    """Median ms per call, one call per cache copy in a replayed graph (the mask built before)."""
    spec._memo.clear()
    calls = lambda: [decode_attention(q, k, v, spec, backend=backend) for k, v in zip(ks, vs)]  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        calls()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        calls()
    return time_ms(g.replay, warmup=3, rep=15) / len(ks)


def main() -> None:
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}, batch 128, bf16")
    for shape, variants in attention_shapes(8192, 32).items():
        hq, hkv, d, dv, keys, window, meta = shape
        if keys >= 4096:
            continue
        q, k, v, spec = inputs(shape, 128, torch.device("cuda"), torch.bfloat16)
        nbytes = k.numel() * k.element_size() + v.numel() * v.element_size()
        gb = nbytes / HBM_BYTES_PER_S * 1e3
        copies = max(2, math.ceil(150e6 / nbytes))
        ks, vs = [k] + [k.clone() for _ in range(copies - 1)], [v] + [v.clone() for _ in range(copies - 1)]
        base, sdpa = timed(q, ks, vs, spec), timed(q, ks, vs, spec, "reference")
        found = []
        for (bn, warps, stages), splits in itertools.product(itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3, 4)), (0, 1, 2, 4, 8)):
            os.environ["ABLATE_DECODE_ATTENTION_CONFIG"] = f"{bn},{warps},{stages}"
            if splits:
                os.environ["ABLATE_DECODE_ATTENTION_SPLITS"] = str(splits)
            else:
                os.environ.pop("ABLATE_DECODE_ATTENTION_SPLITS", None)
            try:
                found.append((timed(q, ks, vs, spec), bn, warps, stages, splits or "auto"))
            except Exception as e:  # a configuration that does not fit is a result
                found.append((float("inf"), bn, warps, stages, f"{splits}: {type(e).__name__}"))
        os.environ.pop("ABLATE_DECODE_ATTENTION_CONFIG", None)
        os.environ.pop("ABLATE_DECODE_ATTENTION_SPLITS", None)
        found.sort(key=lambda r: r[0])
        best = found[0]
        print(f"| {hq}/{hkv} | {d}/{dv} | {keys} | {window} + {meta} | SDPA {sdpa * 1e3:.1f} µs ({gb / sdpa:.0%}) | default {base * 1e3:.1f} µs ({gb / base:.0%}) "
              f"| best {best[0] * 1e3:.1f} µs ({gb / best[0]:.0%}) at {best[1:]} | {', '.join(variants)} |", flush=True)
        for t, *cfg in found[:5]:
            print(f"<!-- {hq}/{hkv} {keys}: {t * 1e3:.1f} µs {tuple(cfg)} -->")
        q = k = v = ks = vs = spec = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
