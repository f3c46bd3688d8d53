"""One-query attention over a KV cache in Triton (split-K "flash decoding"), for the decode step.

Same contract as ``ablate.model.decode.decode_attention_ref``: q (b, hq, 1, d), k (b, hkv, lk, d),
v (b, hkv, lk, dv), a bool mask of the keys each sequence may see, (b or 1, lk). A decode step is
bound by reading the cache once, so each program takes one (sequence, KV head) and all ``hq / hkv``
query heads of its group as the rows of one tile: every K/V element is read once, whatever the GQA
grouping. The mask is a byte per key per sequence, so full attention, the sliding-window ring buffer
with meta tokens and unwritten slots are one kernel.

When (sequence, KV head) pairs are too few to fill the GPU (GQA at small batch), the keys are split
over several programs, each writes an unnormalized partial output with its running max and sum, and
a second kernel merges them (the log-sum-exp combine of split-K flash decoding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ablate.kernels.triton.interpreter_compat import patch_when_interpreting
from ablate.kernels.triton.support import env_ints

patch_when_interpreting()  # CPU tests: fixes to triton 3.6's interpreter


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, m_ptr, l_ptr,
    hkv, group, lk, keys_per_split, scale,
    q_b, q_h, q_d,
    k_b, k_h, k_l, k_d,
    v_b, v_h, v_l, v_d,
    mask_b,
    o_b, o_h, o_s, o_d,
    ml_b, ml_h, ml_s,
    D, DV,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    SPLIT: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // hkv
    kvh = pid % hkv
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mg, md, mdv = offs_g < group, offs_d < D, offs_dv < DV
    heads = kvh * group + offs_g
    q = tl.load(q_ptr + b * q_b + heads[:, None] * q_h + offs_d[None, :] * q_d, mask=mg[:, None] & md[None, :], other=0.0)

    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, lk)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    k_base = k_ptr + b * k_b + kvh * k_h
    v_base = v_ptr + b * v_b + kvh * v_h
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < end
        allowed = tl.load(mask_ptr + b * mask_b + offs_n, mask=mn, other=0) != 0
        k = tl.load(k_base + offs_n[:, None] * k_l + offs_d[None, :] * k_d, mask=mn[:, None] & md[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(allowed[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row that has seen only masked keys so far keeps max -inf: shift by 0 so exp gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_n[:, None] * v_l + offs_dv[None, :] * v_d, mask=mn[:, None] & mdv[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    if SPLIT:
        o_ptrs = out_ptr + b * o_b + heads[:, None] * o_h + split * o_s + offs_dv[None, :] * o_d
        tl.store(o_ptrs, acc, mask=mg[:, None] & mdv[None, :])
        ml = b * ml_b + heads * ml_h + split * ml_s
        tl.store(m_ptr + ml, m_i, mask=mg)
        tl.store(l_ptr + ml, l_i, mask=mg)
    else:
        out = acc / l_i[:, None]
        o_ptrs = out_ptr + b * o_b + heads[:, None] * o_h + offs_dv[None, :] * o_d
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mg[:, None] & mdv[None, :])


@triton.jit
def _combine_kernel(
    part_ptr, m_ptr, l_ptr, out_ptr,
    hq, splits, DV,
    p_b, p_h, p_s, p_d,
    ml_b, ml_h, ml_s,
    o_b, o_h, o_d,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // hq
    h = pid % hq
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    ms, mdv = offs_s < splits, offs_dv < DV
    ml = b * ml_b + h * ml_h + offs_s * ml_s
    m = tl.load(m_ptr + ml, mask=ms, other=float("-inf"))
    l = tl.load(l_ptr + ml, mask=ms, other=0.0)
    # every row sees at least one key (MaskSpec.dense), so some split has a finite max
    w = tl.exp(m - tl.max(m, axis=0))
    part = tl.load(part_ptr + b * p_b + h * p_h + offs_s[:, None] * p_s + offs_dv[None, :] * p_d, mask=ms[:, None] & mdv[None, :], other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + b * o_b + h * o_h + offs_dv * o_d, out.to(out_ptr.dtype.element_ty), mask=mdv)


# A cache of at most this many keys (a sliding-window ring, a short prompt) is read in one program
# per (sequence, KV head) with smaller tiles: at batch 128 the splits and their combine kernel cost
# more than they gain there (reports/bench-h100/decode-attention-short/: 4-25% faster per call).
SHORT_CACHE = 4096


def launch_config(lk: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for ``lk`` keys; ``ABLATE_DECODE_ATTENTION_CONFIG="64,4,3"``
    overrides."""
    return env_ints("ABLATE_DECODE_ATTENTION_CONFIG") or ((32, 2, 3) if lk <= SHORT_CACHE else (64, 4, 3))


def num_splits(pairs: int, lk: int, block_n: int, device: torch.device) -> int:
    """Key splits per (sequence, KV head): enough programs for ~4 per SM, each at least one tile; a
    short cache is split only when the pairs do not cover the SMs once.
    ``ABLATE_DECODE_ATTENTION_SPLITS`` overrides (tests force either path)."""
    forced = env_ints("ABLATE_DECODE_ATTENTION_SPLITS")
    tiles = triton.cdiv(lk, block_n)
    if forced:
        return max(1, min(forced[0], tiles))
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    if lk <= SHORT_CACHE and pairs >= sms:
        return 1
    return max(1, min(tiles, triton.cdiv(4 * sms, pairs)))


def decode_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """q: (b, hq, 1, d); k: (b, hkv, lk, d); v: (b, hkv, lk, dv); allowed: bool (b or 1, lk).
    Returns (b, hq, 1, dv) in q's dtype."""
    b, hq, _, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = hq // hkv
    block_n, warps, stages = launch_config(lk)
    splits = num_splits(b * hkv, lk, block_n, q.device)
    keys_per_split = triton.cdiv(triton.cdiv(lk, splits), block_n) * block_n
    splits = triton.cdiv(lk, keys_per_split)
    mask = allowed.reshape(-1, lk)
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    mask = mask.view(torch.uint8)
    q3 = q[:, :, 0]
    out = torch.empty(b, hq, dv, device=q.device, dtype=q.dtype)
    if splits > 1:
        part = torch.empty(b, hq, splits, dv, device=q.device, dtype=torch.float32)
        m = torch.empty(b, hq, splits, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        target, o_strides, ml_strides = part, part.stride(), m.stride()
    else:
        m = l = out  # unused
        target, o_strides, ml_strides = out, (out.stride(0), out.stride(1), 0, out.stride(2)), (0, 0, 0)
    _decode_attention_kernel[(b * hkv, splits)](
        q3, k, v, mask, target, m, l,
        hkv, group, lk, keys_per_split, scale,
        *q3.stride(), *k.stride(), *v.stride(),
        mask.stride(0) if mask.shape[0] > 1 else 0,
        *o_strides, *ml_strides,
        d, dv,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        SPLIT=splits > 1, IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    if splits > 1:
        _combine_kernel[(b * hq,)](
            part, m, l, out,
            hq, splits, dv,
            *part.stride(), *m.stride(), *out.stride(),
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_DV=triton.next_power_of_2(dv),
        )
    return out.unsqueeze(2)
