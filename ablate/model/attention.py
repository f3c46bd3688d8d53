"""Attention mixer: GQA + RoPE, full or sliding-window causal attention over meta tokens and the
sequence, with cross-layer KV sharing (a layer may attend over K/V that an earlier layer made)."""

from __future__ import annotations

import torch
from torch import nn

from ablate.config import AblateConfig, LayerPlan
from ablate.kernels import attention
from ablate.model.context import ForwardContext
from ablate.model.decode import decode_attention, rope_store_kv
from ablate.model.layers import apply_rope, apply_rope_qk


def attend(q, k, v, plan: LayerPlan, ctx: ForwardContext, num_heads: int, num_kv_heads: int, head_dim: int, v_head_dim: int):
    """q: (b, l, heads*head_dim); k: (b, l, kv_heads*head_dim) and v: (b, l, kv_heads*v_head_dim), or
    None when the layer reuses the K/V of ``plan.kv_source``. Returns (b, l, heads*v_head_dim)."""
    b, l, _ = q.shape
    cos, sin = ctx.rope
    q = q.view(b, l, num_heads, head_dim).transpose(1, 2)
    decoding = l == 1 and ctx.cache is not None
    if plan.owns_kv:
        k = k.view(b, l, num_kv_heads, head_dim).transpose(1, 2)
        v = v.view(b, l, num_kv_heads, v_head_dim).transpose(1, 2)
        slot = ctx.cache.decode_slot(plan.index, ctx.positions, ctx.token_valid) if decoding else None
        if slot is not None:  # RoPE and the cache write as one op (one kernel on GPU)
            k_store, v_store, dst, attended = slot
            q = rope_store_kv(q, cos, sin, k, v, k_store, v_store, dst)
            k, v, k_pos, k_valid = attended
        else:
            q, k = apply_rope_qk(q, k, cos, sin)
            if ctx.cache is not None:
                k, v, k_pos, k_valid = ctx.cache.update_kv(plan.index, k, v, ctx.positions, ctx.token_valid)
            else:
                k_pos, k_valid = ctx.positions, ctx.token_valid
        ctx.shared_kv[plan.index] = (k, v, k_pos, k_valid)
    else:
        q = rope_store_kv(q, cos, sin) if decoding else apply_rope(q, cos, sin)
        k, v, k_pos, k_valid = ctx.shared_kv[plan.kv_source]
    spec = ctx.mask(plan.window, k_pos, k_valid)
    # one query per sequence over a cache: a decode step, memory-bound GQA matmuls (ablate.model.decode)
    out = decode_attention(q, k, v, spec) if l == 1 and ctx.cache is not None else attention(q, k, v, spec)
    return out.transpose(1, 2).reshape(b, l, num_heads * v_head_dim)


class SelfAttention(nn.Module):
    """Llama-style attention with its own projections: query, key and value as one matmul
    (``qkv_proj``; ``ablate.model.hf_import`` packs Llama's three). A layer that reuses an earlier
    layer's K/V projects queries only (``q_proj``)."""

    def __init__(self, config: AblateConfig, plan: LayerPlan):
        super().__init__()
        self.plan = plan
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.v_head_dim = config.resolved_head_dim, config.resolved_v_head_dim
        bias = config.attention_bias
        if plan.owns_kv:
            self.split = [config.query_width, config.key_width, config.value_width]
            self.qkv_proj = nn.Linear(config.hidden_size, sum(self.split), bias=bias)
        else:
            self.q_proj = nn.Linear(config.hidden_size, config.query_width, bias=bias)
        self.o_proj = nn.Linear(config.attention_width, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if self.plan.owns_kv:
            q, k, v = torch.split(self.qkv_proj(x), self.split, dim=-1)
        else:
            q, k, v = self.q_proj(x), None, None
        out = attend(q, k, v, self.plan, ctx, self.num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim)
        return self.o_proj(out)
