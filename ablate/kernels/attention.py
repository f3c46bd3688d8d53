"""Causal attention with grouped KV heads, optional sliding window and always-visible meta tokens.

Positions are absolute (meta tokens occupy 0..num_meta-1), so the same function serves a full
forward, a prefill and one decode step over a cache whose slots may be out of order (a ring buffer).
SDPA cannot express a head dim for values that differs from the keys' on every backend, so fast
paths check ``available`` before they are chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ablate.kernels.backend import op


@dataclass(eq=False)
class MaskSpec:
    """Which keys each query may see, described rather than materialized, so every backend can build
    the mask it runs fastest with (none for plain causal, a dense bool mask, a FlexAttention block
    mask, a flash-attn window).

    q_pos: (b or 1, lq) absolute query positions; k_pos: (b or 1, lk) absolute key positions (the
    slots of a ring buffer may be out of order); a query at position i sees key j when j <= i and
    either j is a meta token (j < num_meta) or i - j < window; key_valid: (b, lk), False at padding
    and unwritten cache slots; q_seq / k_seq: (b, lq) / (b, lk) document index of each token, when
    packed documents must not see each other (meta tokens stay visible to all). Built once per layer
    kind per forward; backends memoize on it."""

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    window: int | None = None
    num_meta: int = 0
    key_valid: torch.Tensor | None = None
    aligned: bool = False  # queries and keys are the same positions, in order (a full forward)
    q_seq: torch.Tensor | None = None
    k_seq: torch.Tensor | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def plain_causal(self) -> bool:
        """Every query sees exactly the keys at or before it: the case fused causal kernels take."""
        return (
            self.aligned
            and self.key_valid is None
            and self.q_seq is None
            and (self.window is None or self.window >= self.q_pos.shape[-1])
        )

    def memo(self, key: str, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def dense(self) -> torch.Tensor:
        """Bool mask, True where a query may attend: (lq, lk), or (b, 1, lq, lk) with padding."""
        return self.memo("dense", self._dense)

    def _dense(self) -> torch.Tensor:
        qp, kp = self.q_pos.unsqueeze(-1), self.k_pos.unsqueeze(-2)
        allowed = kp <= qp
        if self.window is not None:
            allowed = allowed & ((qp - kp < self.window) | (kp < self.num_meta))
        if self.q_seq is not None:
            allowed = allowed & ((self.q_seq.unsqueeze(-1) == self.k_seq.unsqueeze(-2)) | (kp < self.num_meta))
        if self.key_valid is not None:
            allowed = allowed & self.key_valid.unsqueeze(-2)
        if allowed.dim() == 3:
            allowed = allowed[0] if allowed.shape[0] == 1 else allowed.unsqueeze(1)
        # a query that may see nothing (a padding position) sees everything instead: its output is
        # discarded, and this keeps softmax finite
        return allowed | ~allowed.any(dim=-1, keepdim=True)


def attention_ref(q, k, v, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    """q: (b, hq, lq, d); k: (b, hkv, lk, d); v: (b, hkv, lk, dv). Softmax in fp32."""
    hq, hkv = q.shape[1], k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k.to(acc)) * scale
    scores = scores.masked_fill(~spec.dense(), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.to(acc)).to(q.dtype)


def attention_sdpa(q, k, v, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    """torch's scaled_dot_product_attention: flash / cuDNN / memory-efficient kernels on GPU, a
    fused C++ kernel on CPU. Plain causal runs mask-free (the fastest case)."""
    gqa = q.shape[1] != k.shape[1]
    if spec.plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=spec.dense(), scale=scale, enable_gqa=gqa)


_ATTENTION = op("attention", attention_ref)
_ATTENTION.register("sdpa", attention_sdpa)


def attention(q, k, v, spec: MaskSpec, scale=None, backend=None):
    fn = _ATTENTION.choose(backend, q, k, v, spec)
    return fn(q, k, v, spec, scale)
