"""One-token decode steps: attention over a cache, the conv-state roll, the SSM recurrent updates.

Each is the single-step case of a reference op in ``ablate.kernels`` (attention_ref,
causal_conv1d_ref, selective_scan_ref, ssd_scan_sequential_ref) written for decode: states are
updated in place (so a CUDA graph can replay the step over fixed buffers), no Python depends on
tensor values, and the work is a few memory-bound passes. tests/test_cache.py holds each against its
reference. Decode attention, the conv step and the SSM state updates are ops with a fused Triton
fast path (``ablate.kernels.triton.decode_attention``, ``ablate.model.decode_triton``), chosen like
every kernel op (``ABLATE_<OP>_BACKEND``, else auto).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ablate.kernels import MaskSpec
from ablate.kernels.backend import op
from ablate.kernels.triton.support import can_run
from ablate.model.elementwise import fusable
from ablate.model.layers import apply_rope, apply_rope_qk, rms_norm


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    """q: (b, hq, 1, d); k: (b, hkv, lk, d); v: (b, hkv, lk, dv). Returns (b, hq, 1, dv).

    GQA without repeating K/V: the query heads of one group become query rows of their KV head, so
    fused SDPA runs plain multi-head attention over each KV head read once. (SDPA's own
    ``enable_gqa`` takes only the flash and math kernels; flash takes no mask, math materializes the
    repeat.) The mask, one row per sequence, is the same for every row of the group."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)
    bias = spec.memo(("decode_bias", q.dtype), lambda: _additive_bias(spec.dense(), q.dtype))
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=bias, scale=_scale(q, scale))
    return out.reshape(b, hq, 1, v.shape[-1])


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def _additive_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask as SDPA's fused kernels take it, built once per layer kind per step: additive, in
    the query dtype, (b or 1, 1, 1, lk), rows padded to 16 elements so the memory-efficient kernel
    reads it as is (it copies a misaligned mask on every call)."""
    lk = allowed.shape[-1]
    allowed = allowed.reshape(-1, 1, 1, lk)
    bias = torch.full((allowed.shape[0], 1, 1, lk + (-lk) % 16), float("-inf"), dtype=dtype, device=allowed.device)
    bias[..., :lk].masked_fill_(allowed, 0.0)
    return bias[..., :lk]


@fusable
def conv_step_ref(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = "silu") -> torch.Tensor:
    """One step of the causal depthwise conv. x: (b, c) the new input; state: (b, c, k-1) the previous
    k-1 inputs, rolled in place to end with x. Returns (b, c)."""
    window = torch.cat([state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (b, c, k)
    y = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    state.copy_(window[..., 1:])
    return y


def selective_state_update_ref(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """One step of Mamba's selective scan. state: (b, d, n), updated in place (math in fp32 whatever
    its dtype); u, delta, z: (b, d); A: (d, n); B, C: (b, n); D, delta_bias: (d,). Returns y (b, d)
    in u's dtype."""
    dtype = u.dtype
    u32, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = F.softplus(delta)
    h = state.float() * torch.exp(delta.unsqueeze(-1) * A.float()) + (delta * u32).unsqueeze(-1) * B.float().unsqueeze(1)
    state.copy_(h)
    y = (h * C.float().unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + u32 * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def ssd_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One step of Mamba2's SSD recurrence. state: (b, h, p, n), updated in place (math in fp32);
    x: (b, h, p); dt: (b, h), to which ``dt_bias`` (h,) is added and softplus applied if asked (as
    Mamba2 does); A_log: (h,), the decay rate being A = -exp(A_log); B, C: (b, g, n); D: (h,). The
    bias, softplus and decay rate are taken inside the step so they cost no kernel of their own.
    Returns y (b, h, p) in x's dtype."""
    dtype = x.dtype
    heads = x.shape[1]
    x32, dt = x.float(), dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    B = B.float().repeat_interleave(heads // B.shape[1], dim=1)  # (b, h, n)
    C = C.float().repeat_interleave(heads // C.shape[1], dim=1)
    decay = torch.exp(dt * -torch.exp(A_log.float()))[:, :, None, None]
    h = state.float() * decay + (dt.unsqueeze(-1) * x32).unsqueeze(-1) * B.unsqueeze(2)
    state.copy_(h)
    y = (h * C.unsqueeze(2)).sum(-1)
    if D is not None:
        y = y + x32 * D.float()[:, None]
    return y.to(dtype)


def rope_store_kv_ref(q, cos, sin, k=None, v=None, k_store=None, v_store=None, dst=None) -> torch.Tensor:
    """A decode step's RoPE and cache write. q: (b, hq, 1, d) and k: (b, hkv, 1, d) rotated by cos,
    sin (b or 1, 1, 1, d); k and v (b, hkv, 1, dv) stored at slot ``dst`` (1,) of k_store, v_store
    (b, hkv, slots, ·) in place. Returns the rotated q. Without k: q rotated only (a layer that reads
    an earlier layer's K/V)."""
    if k is None:
        return apply_rope(q, cos, sin)
    q, k = apply_rope_qk(q, k, cos, sin)
    k_store.index_copy_(2, dst, k.to(k_store.dtype))
    v_store.index_copy_(2, dst, v.to(v_store.dtype))
    return q


def _rope_store_kv_triton(*args):
    from ablate.kernels.triton.rope_store import rope_store_kv_triton

    return rope_store_kv_triton(*args)


def _rope_store_kv_available(q, cos, sin, k=None, v=None, k_store=None, v_store=None, dst=None) -> bool:
    if not can_run(q, cos, sin, k, v, k_store, v_store, dst):
        return False
    from ablate.kernels.triton.rope_store import supported

    return supported(q, cos, sin, k, v, k_store, v_store)


def _decode_attention_triton(q, k, v, spec: MaskSpec, scale=None):
    from ablate.kernels.triton.decode_attention import decode_attention_triton

    return decode_attention_triton(q, k, v, spec.dense(), _scale(q, scale))


def segment_rms_norm_ref(x: torch.Tensor, weights: tuple[torch.Tensor, ...], eps: float) -> torch.Tensor:
    """RMSNorm over consecutive segments of the last dim, one weight per segment (its width): Hymba's
    dt, B and C, which the x projection gives side by side. Returns x's shape."""
    parts = torch.split(x, [w.numel() for w in weights], dim=-1)
    return torch.cat([rms_norm(p, w, eps) for p, w in zip(parts, weights)], dim=-1)


def _segment_rms_norm_triton(*args):
    from ablate.model.decode_triton import segment_rms_norm_triton

    return segment_rms_norm_triton(*args)


def _conv_step_triton(*args):
    from ablate.model.decode_triton import conv_step_triton

    return conv_step_triton(*args)


def _selective_triton(*args):
    from ablate.model.decode_triton import selective_state_update_triton

    return selective_state_update_triton(*args)


def _ssd_triton(*args):
    from ablate.model.decode_triton import ssd_state_update_triton

    return ssd_state_update_triton(*args)


_DECODE_ATTENTION = op("decode_attention", decode_attention_ref)
# auto takes the kernel wherever it runs: it reads every 8k cache of the paper shapes at 85-99% of the
# H100's bandwidth (reports/bench-h100/decode_attention.md), while SDPA reads grouped heads at 66-79%
# and, for one query head per KV head, dispatches to cuDNN (~95%) or to its memory-efficient kernel
# (~47%: Table 1's Llama step took 38.9 instead of 20.7 ms) by conditions outside our control
_DECODE_ATTENTION.register("triton", _decode_attention_triton, lambda q, k, v, *rest: can_run(q, k, v))
_SEGMENT_NORM = op("segment_rms_norm", segment_rms_norm_ref)
_SEGMENT_NORM.register(
    "triton", _segment_rms_norm_triton, lambda x, weights, eps: len(weights) == 3 and x.shape[-1] <= 4096 and can_run(x, *weights)
)
_CONV_STEP = op("conv_step", conv_step_ref)
_CONV_STEP.register("triton", _conv_step_triton, lambda x, state, *rest: can_run(x, state))
_SELECTIVE_STEP = op("selective_state_update", selective_state_update_ref)
_SELECTIVE_STEP.register("triton", _selective_triton, lambda state, u, *rest: can_run(state, u))
_SSD_STEP = op("ssd_state_update", ssd_state_update_ref)
_SSD_STEP.register("triton", _ssd_triton, lambda state, x, *rest: can_run(state, x))
_ROPE_STORE = op("rope_store_kv", rope_store_kv_ref)
_ROPE_STORE.register("triton", _rope_store_kv_triton, _rope_store_kv_available)


def decode_attention(q, k, v, spec: MaskSpec, scale: float | None = None, backend=None) -> torch.Tensor:
    """One query per sequence over a cache (a decode step); see ``decode_attention_ref``. The Triton
    path (``ablate.kernels.triton.decode_attention``) reads each K/V element once per step."""
    if q.shape[2] != 1:
        raise ValueError(f"decode_attention takes one query per sequence, got {q.shape[2]}")
    args = (q, k, v, spec, scale)
    return _DECODE_ATTENTION.choose(backend, *args)(*args)


def rope_store_kv(q, cos, sin, k=None, v=None, k_store=None, v_store=None, dst=None, backend=None) -> torch.Tensor:
    """A decode step's RoPE and K/V cache write, one kernel on GPU; see ``rope_store_kv_ref``."""
    args = (q, cos, sin, k, v, k_store, v_store, dst)
    return _ROPE_STORE.choose(backend, *args)(*args)


def segment_rms_norm(x, weights, eps, backend=None):
    """RMSNorms over consecutive segments of one row, one kernel on GPU; see ``segment_rms_norm_ref``."""
    args = (x, tuple(weights), eps)
    return _SEGMENT_NORM.choose(backend, *args)(*args)


def conv_step(x, state, weight, bias=None, activation="silu", backend=None):
    """One step of the causal depthwise conv, state rolled in place; see ``conv_step_ref``."""
    args = (x, state, weight, bias, activation)
    return _CONV_STEP.choose(backend, *args)(*args)


def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, backend=None):
    """One Mamba step, state updated in place; see ``selective_state_update_ref``."""
    args = (state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _SELECTIVE_STEP.choose(backend, *args)(*args)


def ssd_state_update(state, x, dt, A_log, B, C, D=None, dt_bias=None, dt_softplus=False, backend=None):
    """One Mamba2 step, state updated in place; see ``ssd_state_update_ref``."""
    args = (state, x, dt, A_log, B, C, D, dt_bias, dt_softplus)
    return _SSD_STEP.choose(backend, *args)(*args)
