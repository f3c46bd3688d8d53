"""Time a few 8k prefills of one paper-scale variant into its (meta-seeded) cache, one line per call.

Run with ``ABLATE_ATTENTION_BACKEND`` set to the backend under test (``flex`` forces FlexAttention
also where the cache is seeded, which ``flex_available`` declines). The first call includes
compilation; the later ones are the prefill's own time.

    python3 reports/bench-h100/flex-prefill/prefill_probe.py VARIANT [ROWS] [CALLS]
"""

import os
import sys
import time

import torch

from ablate.bench.targets import resolve_target
from ablate.bench.throughput import random_prompts
from ablate.model.cache import AblateCache, meta_seed


def main(name: str, rows: int = 8, calls: int = 3, prompt: int = 8192) -> None:
    cuda = torch.cuda.is_available()  # on CPU: the tiny scale, to check the script itself
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16
    prompt = prompt if cuda else 64
    model = resolve_target(name, "paper" if cuda else "tiny").build(dtype, device).eval()
    cache = AblateCache.for_model(model, rows, prompt + 8, dtype, device)
    seed = meta_seed(model, dtype, device) if cache.num_meta else None
    ids = random_prompts(rows, prompt, model.config.vocab_size, 0, device)
    backend = os.environ.get("ABLATE_ATTENTION_BACKEND", "auto")
    for call in range(calls):
        cache.reset(seed)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, logits_to_keep=1)
        if cuda:
            torch.cuda.synchronize()
        s = time.perf_counter() - t0
        print(f"{name} backend={backend} rows={rows} call {call}: {s:.3f} s, {rows * prompt / s:,.0f} tok/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
