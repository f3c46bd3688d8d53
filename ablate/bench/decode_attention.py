"""Decode attention at the paper's shapes: the Triton kernel against the SDPA reference, parity and speed.

    python -m ablate.bench.decode_attention --out DIR [--batch 128] [--prompt 8192] [--gen 32]

One entry per distinct attention layer of the Table 1 / Table 3 variants at paper scale (heads, KV
heads, head sizes, keys: a full layer holds meta + prompt + generated tokens, a sliding-window layer
meta + its ring). Parity: both paths on the same bf16 (and fp32) inputs against ``attention_ref`` in
fp64 at batch 2 over a wrapped ring with padding, ||out - ref|| / ||ref||. Speed: median ms (CUDA
events after warm-up, L2 flushed, ``ablate.bench.kernels.time_ms``) at the benchmark batch in bf16;
GB/s counts K and V read once (the step's floor), % of the 3.0 TB/s the H100 measured.
Writes DIR/decode_attention.{json,md} and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ablate.bench.kernels import HBM_BYTES_PER_S, time_ms

PARITY_TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def attention_shapes(prompt: int, gen: int) -> dict[tuple, list[str]]:
    """(hq, hkv, d, dv, keys, window, meta) -> the variants with such a layer."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple, list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        for kind in sorted({k for k in c.layer_attention if k}):
            window = c.sliding_window if kind == "sliding" else None
            keys = c.num_meta_tokens + (prompt + gen if window is None else min(window, prompt + gen))
            key = (c.num_attention_heads, c.num_key_value_heads, c.resolved_head_dim, c.resolved_v_head_dim, keys, window, c.num_meta_tokens)
            shapes.setdefault(key, []).append(name)
    return shapes


def inputs(shape: tuple, batch: int, device, dtype, seed: int = 0, padded: bool = False):
    """q, k, v and the MaskSpec of one decode step: the query at the last position; a sliding-window
    cache is a ring that has wrapped (slots out of order) behind the meta slots."""
    from ablate.kernels.attention import MaskSpec

    hq, hkv, d, dv, keys, window, meta = shape
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, hq, 1, d, generator=g, device=device).to(dtype)
    k = torch.randn(batch, hkv, keys, d, generator=g, device=device).to(dtype)
    v = torch.randn(batch, hkv, keys, dv, generator=g, device=device).to(dtype)
    last = 10 * keys
    if window is None:
        k_pos = torch.arange(keys, device=device)
        last = keys - 1
    else:
        ring = torch.arange(last - (keys - meta) + 1, last + 1, device=device).roll(keys // 3)
        k_pos = torch.cat([torch.arange(meta, device=device), ring])
    valid = None
    if padded:
        valid = torch.ones(batch, keys, dtype=torch.bool, device=device)
        valid[0, meta : meta + keys // 4] = False
    spec = MaskSpec(torch.tensor([[last]], device=device), k_pos[None], window, meta, valid)
    return q, k, v, spec


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm())


def run(batch: int, prompt: int, gen: int, say=print) -> list[dict]:
    from ablate.kernels.attention import attention_ref
    from ablate.model.decode import decode_attention

    device = torch.device("cuda")
    rows = []
    for shape, variants in attention_shapes(prompt, gen).items():
        hq, hkv, d, dv, keys, window, meta = shape
        row = {"hq": hq, "hkv": hkv, "d": d, "dv": dv, "keys": keys, "window": window, "meta": meta, "variants": variants}
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v, spec = inputs(shape, 2, device, dtype, padded=True)
            ref = attention_ref(q.double(), k.double(), v.double(), spec)
            for impl in ("reference", "triton"):
                err = rel_err(decode_attention(q, k, v, spec, backend=impl), ref)
                row[f"err_{impl}_{str(dtype).removeprefix('torch.')}"] = err
                row.setdefault("parity", True)
                row["parity"] &= err < PARITY_TOL[dtype]
        q, k, v, spec = inputs(shape, batch, device, torch.bfloat16)
        kv_bytes = k.numel() * k.element_size() + v.numel() * v.element_size()
        for impl in ("reference", "triton"):
            spec._memo.clear()  # each path builds its own mask (on its first call; the spec memoizes it)
            ms = time_ms(lambda: decode_attention(q, k, v, spec, backend=impl))
            row[f"{impl}_ms"] = ms
            row[f"{impl}_GBps"] = kv_bytes / ms * 1e-6
            row[f"{impl}_bound"] = kv_bytes / HBM_BYTES_PER_S * 1e3 / ms
        q = k = v = spec = None  # free the batch's cache before the next shape
        torch.cuda.empty_cache()
        say(markdown_row(row))
        rows.append(row)
    return rows


HEADER = ("| heads (q/kv) | d / dv | keys | window + meta | parity (rel. err bf16: SDPA, Triton) | SDPA ms | Triton ms | "
          "SDPA % of 3 TB/s | Triton % of 3 TB/s | speed-up | variants |")


def markdown_row(r: dict) -> str:
    window = f"{r['window']} + {r['meta']}" if r["window"] else (f"full + {r['meta']}" if r["meta"] else "full")
    ok = "ok" if r["parity"] else "FAIL"
    return (f"| {r['hq']}/{r['hkv']} | {r['d']} / {r['dv']} | {r['keys']:,} | {window} | {ok}: {r['err_reference_bfloat16']:.1e}, "
            f"{r['err_triton_bfloat16']:.1e} | {r['reference_ms']:.3f} | {r['triton_ms']:.3f} | {100 * r['reference_bound']:.0f}% | "
            f"{100 * r['triton_bound']:.0f}% | {r['reference_ms'] / r['triton_ms']:.2f}x | {', '.join(r['variants'])} |")


def main(
    out: Path = typer.Option(..., "--out", "-o", help="directory for decode_attention.{json,md}"),
    batch: int = typer.Option(128, "--batch", help="sequences per decode step (the paper's protocol)"),
    prompt: int = typer.Option(8192, "--prompt", help="prompt tokens in the cache"),
    gen: int = typer.Option(32, "--gen", help="generated tokens the cache also holds"),
):
    """Decode attention, Triton vs SDPA, at every attention shape of the paper-scale variants."""
    from ablate.rundir import provenance, write_json_atomic

    if not torch.cuda.is_available():
        raise typer.BadParameter("needs a CUDA device (the Triton path's CPU parity is tests/test_kernels_decode_attention.py)")
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    print(HEADER)
    rows = run(batch, prompt, gen)
    md = [
        "# Decode attention: Triton split-K kernel vs SDPA (the reference path)",
        "",
        f"Measured {prov['date']} on {prov['device']}, git {prov['git_sha']}, torch {prov['torch']}. Command: `{prov['command']}`",
        "",
        f"One decode step's attention (one query per sequence) at batch {batch}, bf16, over a cache of the prompt ({prompt}) + "
        f"generated ({gen}) tokens, or a sliding-window ring; median of CUDA-event timings after warm-up with L2 flushed. "
        "% of 3 TB/s: K and V bytes read once over the time. Parity at batch 2 with padding, bf16 inputs, against "
        f"attention_ref in fp64 (tolerance {PARITY_TOL[torch.bfloat16]:.0e}; fp32 {PARITY_TOL[torch.float32]:.0e}, in the JSON).",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *(markdown_row(r) for r in rows),
        "",
    ]
    (out / "decode_attention.md").write_text("\n".join(md))
    write_json_atomic(out / "decode_attention.json", {"provenance": prov, "batch": batch, "prompt": prompt, "gen": gen, "rows": rows})
    failed = [r for r in rows if not r["parity"]]
    print(f"parity: {len(rows) - len(failed)}/{len(rows)} shapes within tolerance; wrote {out / 'decode_attention.md'}")
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
