"""Time a few 8k prefills of one paper-scale variant into its (meta-seeded) cache, one line per call.

Run with ``ABLATE_ATTENTION_BACKEND`` set to the backend under test (``flex`` forces FlexAttention,
``sdpa`` the dense-mask path). The first call includes compilation; the later ones are the
prefill's own time. With ``--compare``: one prefill with the auto choice and one with SDPA, and the
relative difference of their last 64 positions' logits and of the caches they leave.

    python3 reports/bench-h100/flex-prefill/prefill_probe.py VARIANT [ROWS] [CALLS]
    python3 reports/bench-h100/flex-prefill/prefill_probe.py --compare VARIANT [ROWS]
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


def compare(name: str, rows: int = 2, prompt: int = 8192) -> None:
    cuda = torch.cuda.is_available()
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16
    prompt = prompt if cuda else 64
    model = resolve_target(name, "paper" if cuda else "tiny").build(dtype, device).eval()
    seed = meta_seed(model, dtype, device) if model.config.num_meta_tokens else None
    ids = random_prompts(rows, prompt, model.config.vocab_size, 0, device)

    def prefill(backend, row_ids):
        os.environ["ABLATE_ATTENTION_BACKEND"] = backend
        cache = AblateCache.for_model(model, row_ids.shape[0], prompt + 8, dtype, device)
        cache.reset(seed)
        with torch.no_grad():
            logits = model(input_ids=row_ids, past_key_values=cache, logits_to_keep=64).logits.float()
        os.environ.pop("ABLATE_ATTENTION_BACKEND")
        return logits, [t.float() for s in cache.kv.values() for t in (s.k, s.v)]

    auto, sdpa = prefill("auto", ids), prefill("sdpa", ids)
    # the bf16 noise floor: the same SDPA path, one row at a time (other GEMM kernels, other sums)
    singles = [prefill("sdpa", ids[i : i + 1]) for i in range(rows)]
    floor = torch.cat([x[0] for x in singles]), [torch.cat(ts) for ts in zip(*(x[1] for x in singles))]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    for label, (la, ca), (lb, cb) in (("auto vs sdpa", auto, sdpa), ("sdpa by rows vs sdpa (noise floor)", floor, sdpa)):
        print(f"{name} rows={rows}: {label}: logits of the last 64 positions rel. diff {rel(la, lb):.2e}, "
              f"argmax agreement {(la.argmax(-1) == lb.argmax(-1)).float().mean().item():.4f}, "
              f"cache K/V max rel. diff {max(rel(a, b) for a, b in zip(ca, cb)):.2e}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], *(int(a) for a in sys.argv[3:]))
    else:
        main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
