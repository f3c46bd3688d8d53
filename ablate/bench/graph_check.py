"""Device check of the decode fast path: for every variant at a small scale, greedy decoding replayed
from a CUDA graph gives the logits of one full forward over the same tokens.

    python -m ablate.bench.graph_check                 # on the GPU: tiny scale, fp32, graphs on
    python -m ablate.bench.graph_check --device cpu    # the same check, eager

Prints one line per variant (max |logit difference|, graph or eager) and exits 1 if any variant is
off by more than ``--tol``. The CPU tests hold the same property eagerly (tests/test_cache.py); this
covers what only a GPU runs: capture, replay, the fused Triton steps, the compiled elementwise
functions (``ablate.model.elementwise``), SDPA's CUDA kernels.
"""

from __future__ import annotations

import sys

import torch
import typer


@torch.no_grad()
def check_variant(name: str, scale: str, device: str, dtype: torch.dtype, prompt: int = 13, steps: int = 6, batch: int = 3, fuse: bool | None = None) -> dict:
    """Prefill, capture (on CUDA), decode ``steps`` tokens greedily; compare with a full forward."""
    from ablate.bench.targets import resolve_target
    from ablate.model.cache import AblateCache, meta_seed
    from ablate.model.static_decode import StaticGreedyDecoder

    target = resolve_target(name, scale)
    model = target.build(dtype, device)
    config = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=g).to(device)
    cache = AblateCache.for_model(model, batch, prompt + steps, dtype, device)
    use_graph = torch.device(device).type == "cuda"
    decoder = StaticGreedyDecoder(model, cache, use_graph=use_graph, fuse=fuse)
    if use_graph:
        cache.reset(meta_seed(model, dtype, device) if config.num_meta_tokens else None)
    first = model(ids, past_key_values=cache, logits_to_keep=1).logits[:, -1]
    decoder.start(first.argmax(-1, keepdim=True))
    fed, logits = [decoder.tokens.clone()], []
    for _ in range(steps):
        logits.append(decoder.step().clone())
        fed.append(decoder.tokens.clone())
    sequence = torch.cat([ids] + fed[:-1], 1)
    full = model(sequence).logits[:, prompt:]
    diff = (torch.stack(logits, 1).float() - full.float()).abs().max().item()
    return {"variant": name, "max_abs_diff": diff, "graph": decoder.graph is not None, "fused": decoder.fuse}


def main(
    scale: str = typer.Option("tiny", "--scale"),
    device: str = typer.Option("cuda", "--device"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (tight) | bf16"),
    tol: float = typer.Option(1e-2, "--tol", help="largest |logit difference| accepted (a broken step is off by O(1))"),
    fuse: bool = typer.Option(None, "--fuse/--no-fuse", help="compiled elementwise functions in the step (default: on GPU)"),
):
    from ablate.bench.throughput import DTYPES
    from ablate.registry import variant_names

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: keep the comparison tight
    torch.backends.cudnn.allow_tf32 = False

    failures = 0
    for name in variant_names():
        try:
            r = check_variant(name, scale, device, DTYPES[dtype], fuse=fuse)
            ok = r["max_abs_diff"] <= tol
            print(f"{'ok  ' if ok else 'FAIL'} {name:32s} max|diff| {r['max_abs_diff']:.2e} {'graph' if r['graph'] else 'eager'}{' fused' if r['fused'] else ''}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every variant
            ok = False
            print(f"FAIL {name:32s} {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        failures += not ok
    print(f"{failures} of {len(variant_names())} variants failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    typer.run(main)
