"""Experiment: the graph-replayed decode step with our Triton kernels launched as programmatic
dependents (ABLATE_PDL=1) or not (0), alternated in one process; inductor's PDL from the environment."""

from __future__ import annotations

import os
import sys

import torch

from two_streams import events_ms


def run(name, batch=128, keys=8192):
    from ablate.bench.kernels import HBM_BYTES_PER_S
    from ablate.bench.targets import resolve_target
    from ablate.bench.throughput import weight_bytes
    from ablate.model.cache import AblateCache, meta_seed
    from ablate.model.static_decode import StaticGreedyDecoder

    model = resolve_target(name, "paper").build(torch.bfloat16, "cuda")
    cache = AblateCache.for_model(model, batch, keys + 512, torch.bfloat16, "cuda")
    seed = meta_seed(model, torch.bfloat16, "cuda") if model.config.num_meta_tokens else None
    floor = (weight_bytes(model) + cache.nbytes()) / HBM_BYTES_PER_S * 1e3
    prompts = torch.randint(0, model.config.vocab_size, (1, keys), device="cuda")
    res = {"0": [], "1": []}
    for flag in "01010":
        os.environ["ABLATE_PDL"] = flag
        cache.reset(seed)
        dec = StaticGreedyDecoder(model, cache, use_graph=True)
        with torch.no_grad():
            cache.reset(seed)
            view = cache.rows(0, 1)
            model(input_ids=prompts, past_key_values=view, logits_to_keep=1)
            cache.adopt(view)
            cache.fill_rows_from(1)
        res[flag].append(events_ms(dec.step, reps=45))
        del dec
    ind = os.environ.get("TORCHINDUCTOR_ENABLE_PDL", "0")
    for flag, ts in res.items():
        print(f"- {name}, inductor PDL {ind}, ours PDL {flag}: " + " / ".join(f"{t:.3f}" for t in ts)
              + f" ms ({100 * floor / min(ts):.1f}% of the bound at best)", flush=True)
    del model, cache
    torch.cuda.empty_cache()


if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        run(name)
