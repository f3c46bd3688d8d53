"""Blocks: how mixers and FFNs stack into one layer. All are pre-norm residual.

A block takes and returns the residual stream as a pair (x, delta), the stream being x + delta: the
last sublayer's output is added by the next norm, which does the add and the norm in one kernel on
the decode fast path (``RMSNorm.after_add``). delta is None before the first layer.

- ``AttentionBlock`` (Llama): attention, then SwiGLU FFN.
- ``SSMBlock`` (Mamba / Mamba2): SSM mixer, optionally followed by an FFN.
- ``SequentialBlock`` (Samba): Mamba, FFN, attention, FFN, one after the other.
- ``HybridHeadBlock`` (Hymba): attention heads and SSM heads read the same input in parallel; each
  branch output is normalized (its norm weight is the learned scale beta), the two are fused by
  mean or concat, then one output projection; then the FFN.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.config import AblateConfig, LayerPlan
from ablate.model.attention import SelfAttention, attend
from ablate.model.context import ForwardContext
from ablate.model.layers import RMSNorm, SwiGLU
from ablate.model.ssm import SSM_MIXERS, MambaHeads


Stream = tuple[torch.Tensor, torch.Tensor | None]


class FFNSublayer(nn.Module):
    def __init__(self, config: AblateConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None) -> Stream:
        x, h = self.norm.after_add(x, delta)
        return x, self.ffn(h)


class AttentionBlock(nn.Module):
    def __init__(self, config: AblateConfig, plan: LayerPlan):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = SelfAttention(config, plan)
        self.ffn = FFNSublayer(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, delta: torch.Tensor | None = None) -> Stream:
        x, h = self.attn_norm.after_add(x, delta)
        return self.ffn(x, self.attn(h, ctx))


class SSMBlock(nn.Module):
    def __init__(self, config: AblateConfig, plan: LayerPlan):
        super().__init__()
        self.ssm_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ssm = SSM_MIXERS[config.ssm_type](config, plan.index)
        self.ffn = FFNSublayer(config) if config.ffn else None

    def forward(self, x: torch.Tensor, ctx: ForwardContext, delta: torch.Tensor | None = None) -> Stream:
        x, h = self.ssm_norm.after_add(x, delta)
        s = self.ssm(h, ctx)
        return self.ffn(x, s) if self.ffn is not None else (x, s)


class SequentialBlock(nn.Module):
    """Samba's layer: Mamba -> FFN -> attention -> FFN."""

    def __init__(self, config: AblateConfig, plan: LayerPlan):
        super().__init__()
        self.ssm_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ssm = SSM_MIXERS[config.ssm_type](config, plan.index)
        self.ffn1 = FFNSublayer(config)
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = SelfAttention(config, plan)
        self.ffn2 = FFNSublayer(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, delta: torch.Tensor | None = None) -> Stream:
        x, h = self.ssm_norm.after_add(x, delta)
        x, f = self.ffn1(x, self.ssm(h, ctx))
        x, h = self.attn_norm.after_add(x, f)
        return self.ffn2(x, self.attn(h, ctx))


class HybridHeadBlock(nn.Module):
    """Hymba's parallel hybrid-head layer.

    One projection of the normalized input gives, side by side, the attention query, key and value
    (no key/value when the layer reuses an earlier layer's) and the SSM input x and gate z. Mean
    fusion averages two outputs of one width: when the attention heads are narrower than the SSM
    (heads x v_head_dim < SSM width, e.g. Table 1's 4/8/16 heads of 64), ``attn_proj`` maps the
    attention output to the SSM width first; Hymba-1.5B avoids it with 128-wide value heads."""

    def __init__(self, config: AblateConfig, plan: LayerPlan):
        super().__init__()
        self.plan = plan
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.v_head_dim = config.resolved_head_dim, config.resolved_v_head_dim
        attn, inner = config.attention_width, config.ssm_inner_size
        k, v = (config.key_width, config.value_width) if plan.owns_kv else (0, 0)
        self.split = [config.query_width, k, v, inner, inner]
        bias = config.hybrid_proj_bias
        self.mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.in_proj = nn.Linear(config.hidden_size, sum(self.split), bias=bias)
        self.ssm = MambaHeads(config, plan.index)
        self.attn_out_norm = RMSNorm(attn, config.rms_norm_eps)  # beta_1
        self.ssm_out_norm = RMSNorm(inner, config.rms_norm_eps)  # beta_2
        self.fusion = config.fusion
        self.attn_proj = nn.Linear(attn, inner, bias=False) if config.fusion == "mean" and attn != inner else None
        fused = attn + inner if config.fusion == "concat" else inner
        self.out_proj = nn.Linear(fused, config.hidden_size, bias=bias)
        self.ffn = FFNSublayer(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, delta: torch.Tensor | None = None) -> Stream:
        x, h = self.mixer_norm.after_add(x, delta)
        q, k, v, xs, z = torch.split(self.in_proj(h), self.split, dim=-1)
        if not self.plan.owns_kv:
            k = v = None
        a = attend(q, k, v, self.plan, ctx, self.num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim)
        a = self.attn_out_norm(a)
        s = self.ssm_out_norm(self.ssm(xs, z, ctx))
        if self.fusion == "concat":
            fused = torch.cat([a, s], dim=-1)
        else:
            fused = ((self.attn_proj(a) if self.attn_proj is not None else a) + s) / 2
        return self.ffn(x, self.out_proj(fused))


BLOCKS = {
    "attention": AttentionBlock,
    "ssm": SSMBlock,
    "sequential": SequentialBlock,
    "hybrid": HybridHeadBlock,
}
