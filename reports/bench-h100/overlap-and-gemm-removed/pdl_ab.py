"""Experiment: the graph-replayed decode step with our Triton kernels launched as programmatic
dependents (ABLATE_PDL=1) or not (0), alternated in one process; inductor's PDL from the environment."""

from __future__ import annotations

import os
import sys

import torch

from timing import events_ms, paper_model, prefill_one_row


def run(name, batch=128, keys=8192):
    from ablate.model.static_decode import StaticGreedyDecoder

    model, cache, seed, floor = paper_model(name, batch, keys + 512)
    prompts = torch.randint(0, model.config.vocab_size, (1, keys), device="cuda")
    res = {"0": [], "1": []}
    for flag in "01010":
        os.environ["ABLATE_PDL"] = flag
        cache.reset(seed)
        dec = StaticGreedyDecoder(model, cache, use_graph=True)
        prefill_one_row(model, cache, seed, prompts)
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
