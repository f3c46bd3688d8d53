"""Causal attention with grouped KV heads, optional sliding window and always-visible meta tokens.

Positions are absolute (meta tokens occupy 0..num_meta-1), so the same function serves a full
forward, a prefill and one decode step over a cache whose slots may be out of order (a ring buffer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ablate.kernels.backend import op


def attention_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None = None,
    num_meta: int = 0,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask, True where a query may attend to a key.

    q_pos: (lq,) or (b, lq); k_pos: (lk,) or (b, lk); key_valid: (b, lk). A query at position i sees
    key j when j <= i and either j is a meta token (j < num_meta) or i - j < window.
    Returns (lq, lk) or (b, 1, lq, lk)."""
    qp, kp = q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)
    allowed = kp <= qp
    if window is not None:
        allowed = allowed & ((qp - kp < window) | (kp < num_meta))
    if key_valid is not None:
        if allowed.dim() == 2:
            allowed = allowed.unsqueeze(0)
        allowed = allowed & key_valid.unsqueeze(-2)
    if allowed.dim() == 3:
        allowed = allowed.unsqueeze(1)
    # a query that may see nothing (a padding position) sees everything instead: its output is
    # discarded, and this keeps softmax finite
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def attention_ref(q, k, v, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """q: (b, hq, lq, d); k, v: (b, hkv, lk, d); mask: bool, broadcastable to (b, hq, lq, lk) or None
    for plain causal with lq == lk. Softmax in fp32."""
    hq, hkv = q.shape[1], k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k.to(acc)) * scale
    if mask is None:
        lq, lk = q.shape[2], k.shape[2]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.to(acc)).to(q.dtype)


def attention_sdpa(q, k, v, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """torch's scaled_dot_product_attention: flash / cuDNN / memory-efficient kernels on GPU, a
    fused C++ kernel on CPU. A None mask means causal with lq == lk (the fastest case)."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


_ATTENTION = op("attention", attention_ref)
_ATTENTION.register("sdpa", attention_sdpa)


def attention(q, k, v, mask=None, scale=None, backend=None):
    fn = _ATTENTION.choose(backend, q)
    return fn(q, k, v, mask, scale)
