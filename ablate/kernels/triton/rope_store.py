"""A decode step's RoPE and K/V cache write as one Triton kernel.

Same contract as ``ablate.model.decode.rope_store_kv_ref``: rotate the step's queries and keys
(Llama's rotate-half convention, computed in fp32 and rounded once, as the compiled reference does),
return the rotated queries, and store the rotated keys and the values at the cache slot ``dst``.
Before this, a decode step of an attention layer ran three kernels here (the compiled RoPE, then
one ``index_copy_`` each for K and V): 13-15 µs per layer on the H100 for a few hundred KB, where
this kernel takes 2-3 (reports/bench-h100/rope-store/). A layer that reads an earlier layer's K/V
rotates its queries only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter


@triton.jit
def _rotate(x_ptr, row_off, h_stride, heads, cos, sin, offs_d, partner, sign, H: tl.constexpr, D: tl.constexpr):
    """(H, BLOCK_D) rows of ``heads`` heads rotated in fp32; rows past ``heads`` and lanes past D are 0."""
    h = tl.arange(0, H)[:, None]
    mask = (h < heads) & (offs_d[None, :] < D)
    base = x_ptr + row_off + h * h_stride
    x = tl.load(base + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(base + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    return x * cos[None, :] + sign[None, :] * xp * sin[None, :], h, mask


@triton.jit
def _rope_store_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qo_ptr, ks_ptr, vs_ptr, dst_ptr,
    q_b, q_h, k_b, k_h, v_b, v_h, cs_b,
    qo_b, qo_h, ks_b, ks_h, ks_s, vs_b, vs_h, vs_s,
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_KV: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    half: tl.constexpr = D // 2
    offs_d = tl.arange(0, BLOCK_D)
    first = offs_d < half
    partner = tl.where(first, offs_d + half, offs_d - half)
    sign = tl.where(first, -1.0, 1.0)
    cos = tl.load(cos_ptr + row * cs_b + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + row * cs_b + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)

    q, h, mask = _rotate(q_ptr, row * q_b, q_h, HQ, cos, sin, offs_d, partner, sign, BLOCK_HQ, D)
    tl.store(qo_ptr + row * qo_b + h * qo_h + offs_d[None, :], q.to(qo_ptr.dtype.element_ty), mask=mask)
    if HAS_KV:
        slot = tl.load(dst_ptr)
        k, h, mask = _rotate(k_ptr, row * k_b, k_h, HKV, cos, sin, offs_d, partner, sign, BLOCK_HKV, D)
        tl.store(ks_ptr + row * ks_b + h * ks_h + slot * ks_s + offs_d[None, :], k.to(ks_ptr.dtype.element_ty), mask=mask)
        offs_dv = tl.arange(0, BLOCK_DV)
        vmask = (h < HKV) & (offs_dv[None, :] < DV)
        v = tl.load(v_ptr + row * v_b + h * v_h + offs_dv[None, :], mask=vmask)
        tl.store(vs_ptr + row * vs_b + h * vs_h + slot * vs_s + offs_dv[None, :], v.to(vs_ptr.dtype.element_ty), mask=vmask)


def supported(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k=None, v=None, k_store=None, v_store=None) -> bool:
    """One query per row, an even head dimension, unit stride along it everywhere, cos and sin laid
    out alike."""
    views = [q, cos, sin] + [t for t in (k, v, k_store, v_store) if t is not None]
    return (q.shape[2] == 1 and q.shape[-1] % 2 == 0 and cos.stride() == sin.stride()
            and all(t.stride(-1) == 1 for t in views))


def rope_store_kv_triton(q, cos, sin, k=None, v=None, k_store=None, v_store=None, dst=None) -> torch.Tensor:
    """q: (b, hq, 1, d); cos, sin: (b or 1, 1, 1, d); k: (b, hkv, 1, d), v: (b, hkv, 1, dv) stored at
    slot ``dst`` (1,) of k_store (b, hkv, slots, d) and v_store (b, hkv, slots, dv). Returns the
    rotated q, (b, hq, 1, d) contiguous."""
    b, hq, _, d = q.shape
    out = torch.empty(b, hq, 1, d, device=q.device, dtype=q.dtype)
    has_kv = k is not None
    hkv, dv = (k.shape[1], v.shape[-1]) if has_kv else (1, 1)
    if not has_kv:  # unused pointers: any tensor will do
        k = v = k_store = v_store = dst = q
    _rope_store_kernel[(b,)](
        q, k, v, cos, sin, out, k_store, v_store, dst,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0) if cos.shape[0] > 1 else 0,
        out.stride(0), out.stride(1),
        k_store.stride(0), k_store.stride(1), k_store.stride(2) if has_kv else 0,
        v_store.stride(0), v_store.stride(1), v_store.stride(2) if has_kv else 0,
        HQ=hq, HKV=hkv, D=d, DV=dv,
        BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HKV=triton.next_power_of_2(hkv),
        BLOCK_D=triton.next_power_of_2(d), BLOCK_DV=triton.next_power_of_2(dv),
        HAS_KV=has_kv, num_warps=4,
    )
    return out
