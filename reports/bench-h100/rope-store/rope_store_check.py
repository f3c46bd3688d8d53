"""GPU check of the decode step's RoPE + K/V cache write as one Triton kernel
(``ablate.kernels.triton.rope_store``) at every attention shape of the paper variants, batch 128, bf16:
its output and cache against the reference (the compiled RoPE and two ``index_copy_``, as the static
decoder ran them), and both timed as CUDA-graph replays (median µs per call, 8k-slot cache)."""

from __future__ import annotations

import torch

from ablate.bench.fastpaths import time_ms
from ablate.config import layer_plans
from ablate.kernels.triton.rope_store import rope_store_kv_triton
from ablate.model.decode import rope_store_kv_ref
from ablate.model.elementwise import fused_elementwise
from ablate.model.layers import rope_tables
from ablate.registry import resolve, variant_names

BATCH, SLOTS = 128, 8192


def shapes() -> dict[tuple, list[str]]:
    found: dict[tuple, list[str]] = {}
    for name in variant_names():
        c = resolve(name, "paper").config
        if any(p.window is not None or p.owns_kv for p in layer_plans(c)) and c.num_attention_heads:
            key = (c.num_attention_heads, c.num_key_value_heads, c.resolved_head_dim, c.resolved_v_head_dim)
            found.setdefault(key, []).append(name)
    return found


def graph_us(fn) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
    return time_ms(g.replay, warmup=3, rep=20) * 1e3 / 20


def main() -> None:
    dev, dt = "cuda", torch.bfloat16
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}, batch {BATCH}, {SLOTS} slots, bf16")
    print("| hq, hkv, d, dv | variants | q max abs diff | K slot max abs diff | V slot equal | other slots equal | q only max abs diff | reference µs | kernel µs | q only: reference, kernel µs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (hq, hkv, d, dv), names in shapes().items():
        packed = torch.randn(BATCH, 1, hq * d + hkv * d + hkv * dv, device=dev, dtype=dt)
        q, k, v = torch.split(packed, [hq * d, hkv * d, hkv * dv], dim=-1)
        q = q.view(BATCH, 1, hq, d).transpose(1, 2)
        k = k.view(BATCH, 1, hkv, d).transpose(1, 2)
        v = v.view(BATCH, 1, hkv, dv).transpose(1, 2)
        cos, sin = rope_tables(torch.full((BATCH, 1), 8000, device=dev), d, 10000.0, dt)
        stores = [torch.randn(BATCH, hkv, SLOTS, w, device=dev, dtype=dt) for w in (d, dv)]
        ref_stores = [s.clone() for s in stores]
        dst = torch.tensor([4242], device=dev)
        with fused_elementwise():
            want = rope_store_kv_ref(q, cos, sin, k, v, *ref_stores, dst)
            want_q = rope_store_kv_ref(q, cos, sin)
        got = rope_store_kv_triton(q, cos, sin, k, v, *stores, dst)
        got_q = rope_store_kv_triton(q, cos, sin)
        torch.cuda.synchronize()
        q_diff = (got.float() - want.float()).abs().max().item()
        k_diff = (stores[0][:, :, 4242].float() - ref_stores[0][:, :, 4242].float()).abs().max().item()
        v_same = torch.equal(stores[1][:, :, 4242], ref_stores[1][:, :, 4242])
        rest = torch.equal(stores[0][:, :, :4242], ref_stores[0][:, :, :4242]) and torch.equal(stores[1][:, :, 4243:], ref_stores[1][:, :, 4243:])
        qo_diff = (got_q.float() - want_q.float()).abs().max().item()
        with fused_elementwise():
            ref_us = graph_us(lambda: rope_store_kv_ref(q, cos, sin, k, v, *ref_stores, dst))
            ref_q_us = graph_us(lambda: rope_store_kv_ref(q, cos, sin))
        ker_us = graph_us(lambda: rope_store_kv_triton(q, cos, sin, k, v, *stores, dst))
        ker_q_us = graph_us(lambda: rope_store_kv_triton(q, cos, sin))
        print(f"| {hq}, {hkv}, {d}, {dv} | {', '.join(names)} | {q_diff:.1e} | {k_diff:.1e} | {v_same} | {rest} | {qo_diff:.1e} "
              f"| {ref_us:.1f} | {ker_us:.1f} | {ref_q_us:.1f}, {ker_q_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
