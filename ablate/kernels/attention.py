"""Causal attention with grouped KV heads, optional sliding window and always-visible meta tokens.

Positions are absolute (meta tokens occupy 0..num_meta-1), so the same function serves a full
forward, a prefill and one decode step over a cache whose slots may be out of order (a ring buffer).

Backends (``ABLATE_ATTENTION_BACKEND`` or ``backend=`` to force one; ``auto`` takes the first whose
``available`` accepts the call): ``flash_attn`` (when installed, for the masks it can express),
``flex`` (FlexAttention with a block mask built from the ``MaskSpec``, ``ablate/kernels/flex.py``:
CUDA, for sliding windows, meta tokens, documents, padding, and plain causal where value heads are
wider than keys), ``sdpa`` (everything else: mask-free causal through cuDNN / flash, a dense mask
otherwise), then the reference.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from ablate.kernels.backend import op
from ablate.kernels.flex import attention_flex, flex_available


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


def _sdpa_backends():
    """SDPA backends in the order we prefer them on CUDA: cuDNN first (the anchors: 4.78 ms causal
    fwd+bwd at B=4 H=16 L=8192 D=64, against 7.61 for the built-in flash), then flash, then the
    memory-efficient kernel (the one that takes a dense mask and differing value head dims), math
    last. SDPA skips a backend that refuses the inputs, so the list is a preference, never a limit."""
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# K/V heads repeated to the query heads before a CUDA SDPA call: torch's ``enable_gqa`` is honoured by
# the flash and math backends only (pytorch#139586), so passing it can steer a call away from cuDNN.
# The copy costs a few percent of the attention time; ABLATE_SDPA_GQA=native keeps enable_gqa
# (``python -m ablate.bench.fastpaths`` times both).
_EXPAND_GQA = os.environ.get("ABLATE_SDPA_GQA", "expand") != "native"


def attention_sdpa(q, k, v, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    """torch's scaled_dot_product_attention: cuDNN / flash / memory-efficient kernels on GPU, a
    fused C++ kernel on CPU. Plain causal runs mask-free (the fastest case); any other mask is the
    spec's dense bool mask."""
    gqa = q.shape[1] != k.shape[1]
    mask = None if spec.plain_causal else spec.dense()
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=gqa)
    if gqa and _EXPAND_GQA:
        rep = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), False
    # written out in both forms so that torch.compile sees the context manager call directly
    if _HAS_PRIORITY:
        with sdpa_kernel(_sdpa_backends(), set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=gqa)
    with sdpa_kernel(_sdpa_backends()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=gqa)


# newer torch takes the list as a priority order; older ones only as the set of allowed backends
_HAS_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:  # not installed, or built for another torch / CUDA
        return None
    return flash_attn_func


def flash_attn_available(q, k, v, spec: MaskSpec, *_, **__) -> bool:
    """flash-attn (when its package imports) for an aligned forward whose mask it can express:
    causal with an optional sliding window. It has no notion of meta tokens that stay visible past
    the window, of arbitrary key padding or of packed documents without varlen bookkeeping, and its
    value head dim must equal the key's: those cases go elsewhere."""
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_func() is not None):
        return False
    if not spec.aligned or spec.key_valid is not None or spec.q_seq is not None:
        return False
    if spec.num_meta and spec.window is not None and spec.window < q.shape[-2]:
        return False
    return q.shape[-1] == v.shape[-1] and q.shape[-1] <= 256


def attention_flash_attn(q, k, v, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    # flash-attn wants (b, l, h, d); its window (left, right) admits keys i - left .. i + right, and
    # ours admits i - j < window, so left = window - 1
    window = (spec.window - 1, 0) if spec.window is not None and spec.window < q.shape[-2] else (-1, -1)
    out = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True, window_size=window)
    return out.transpose(1, 2)


_ATTENTION = op("attention", attention_ref)
# auto order: flash-attn where installed and the mask fits it, FlexAttention for the masks fused
# kernels cannot skip (CUDA), SDPA for everything else (always available)
_ATTENTION.register("flash_attn", attention_flash_attn, flash_attn_available)
_ATTENTION.register("flex", attention_flex, flex_available)
_ATTENTION.register("sdpa", attention_sdpa)


def attention(q, k, v, spec: MaskSpec, scale=None, backend=None):
    fn = _ATTENTION.choose(backend, q, k, v, spec)
    return fn(q, k, v, spec, scale)
