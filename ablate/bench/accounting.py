"""Analytic parameter and cache accounting, as the paper's Table 1 counts them.

Parameters are counted on a model built on the meta device (no memory, exact shapes). The
attention:SSM ratio follows the paper's convention, which its Table 1 rows 2-4 pin down: attention
parameters are the attention heads' Q, K, V projections (plus the output projection where attention
owns one: Llama, Samba); SSM parameters are the SSM heads (x and z projections, conv, dt/B/C
projections and norms, A, D) plus, in the hybrid-head block, the shared output projection after
fusion. The hybrid block's ``attn_proj`` (the width adapter that mean fusion needs when attention is
narrower than the SSM) counts toward neither, like norms, FFNs and embeddings.

Cache: bytes held for one sequence of ``seq_len`` tokens: for each layer that computes its own K/V
(KV-sharing consumers add nothing), keys and values for every token in full-attention layers and
for at most ``window`` tokens in sliding-window layers, plus the meta tokens in both; plus each SSM
layer's conv state (kernel - 1 inputs) and recurrent state. MB = 10^6 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ablate.config import AblateConfig, layer_plans


@dataclass(frozen=True)
class ParameterCount:
    total: int
    attention: int
    ssm: int

    @property
    def attn_ssm_ratio(self) -> float:
        """Attention over SSM parameters: 0 for SSM-only, inf for attention-only."""
        if self.ssm == 0:
            return math.inf if self.attention else 0.0
        return self.attention / self.ssm

    @property
    def paper_ratio(self) -> str:
        """The paper's notation, attn:ssm as 1:x (or 0:1, 1:0)."""
        if self.attention == 0:
            return "0:1"
        if self.ssm == 0:
            return "1:0"
        return f"1:{self.ssm / self.attention:.2f}"


def _meta_model(config: AblateConfig):
    from ablate.model.lm import AblateForCausalLM

    with torch.device("meta"):
        return AblateForCausalLM(config)


def count_parameters(config: AblateConfig) -> ParameterCount:
    model = _meta_model(config)
    attention = ssm = 0
    q, k, v = config.query_width, config.key_width, config.value_width
    for name, p in model.named_parameters():
        n = p.numel()
        parts = name.split(".")
        if config.block == "hybrid" and "in_proj" in parts and "layers" in parts:
            rows = p.shape[0]
            per_row = n // rows
            owns_kv = config.kv_source[int(parts[parts.index("layers") + 1])] == int(parts[parts.index("layers") + 1])
            attn_rows = q + ((k + v) if owns_kv else 0)
            attention += attn_rows * per_row
            ssm += (rows - attn_rows) * per_row
        elif "attn" in parts or "attn_out_norm" in parts:
            attention += n
        elif "ssm" in parts or "ssm_out_norm" in parts or (config.block == "hybrid" and "out_proj" in parts):
            ssm += n
    total = sum(p.numel() for p in model.parameters())
    return ParameterCount(total=total, attention=attention, ssm=ssm)


@dataclass(frozen=True)
class CacheBytes:
    kv: int
    ssm: int

    @property
    def total(self) -> int:
        return self.kv + self.ssm

    @property
    def mb(self) -> float:
        return self.total / 1e6


def ssm_state_values(config: AblateConfig) -> tuple[int, int]:
    """(conv state, recurrent state) values per SSM layer for one sequence."""
    if config.ssm_type == "mamba2":
        conv_channels = config.ssm_inner_size + 2 * config.ssm_n_groups * config.ssm_state_size
        recurrent = config.ssm_num_heads * config.ssm_head_dim * config.ssm_state_size
    else:
        conv_channels = config.ssm_inner_size
        recurrent = config.ssm_inner_size * config.ssm_state_size
    return conv_channels * (config.ssm_conv_kernel - 1), recurrent


def kv_tokens(config: AblateConfig, window: int | None, seq_len: int) -> int:
    """Tokens one layer's K/V cache holds after ``seq_len`` tokens (meta tokens included)."""
    held = seq_len if window is None else min(seq_len, window)
    return held + config.num_meta_tokens


def cache_bytes(config: AblateConfig, seq_len: int, bytes_per_value: int = 2) -> CacheBytes:
    kv = 0
    for plan in layer_plans(config):
        if plan.owns_kv:
            kv += kv_tokens(config, plan.window, seq_len) * (config.key_width + config.value_width)
    ssm = 0
    if config.has_ssm:
        ssm = config.num_hidden_layers * sum(ssm_state_values(config))
    return CacheBytes(kv=kv * bytes_per_value, ssm=ssm * bytes_per_value)


def ratio_value(paper_ratio: str) -> float:
    """The x of the paper's "1:x" notation as SSM over attention parameters (0:1 -> inf, 1:0 -> 0)."""
    attention, ssm = (float(part) for part in str(paper_ratio).split(":"))
    return math.inf if attention == 0 else ssm / attention


def _diff_pct(ours: float, theirs: float) -> float | None:
    if not math.isfinite(ours) or not math.isfinite(theirs):
        return 0.0 if ours == theirs else None
    if theirs == 0:
        return 0.0 if ours == 0 else None
    return 100.0 * (ours - theirs) / theirs


def accounting_row(variant, seq_len: int) -> dict:
    """One row of ``ablate variants``: a variant's size, parameter ratio and analytic cache, beside
    the paper's figures (and the note explaining a difference) where the variant records them."""
    params = count_parameters(variant.config)
    cache = cache_bytes(variant.config, seq_len)
    paper = variant.paper
    row = {
        "name": variant.name,
        "family": variant.family,
        "scale": variant.scale,
        "seq_len": seq_len,
        "params": params.total,
        "attention_params": params.attention,
        "ssm_params": params.ssm,
        "attn_ssm_ratio": params.attn_ssm_ratio,
        "attn_ssm": params.paper_ratio,
        "cache_mb": round(cache.mb, 4),
        "kv_cache_mb": round(cache.kv / 1e6, 4),
        "ssm_cache_mb": round(cache.ssm / 1e6, 4),
        "paper_attn_ssm": paper.get("attn_ssm_ratio", ""),
        "attn_ssm_diff_pct": "",
        "paper_cache_mb": paper.get("cache_mb", ""),
        "cache_diff_pct": "",
        "note": "; ".join(f"{k.removesuffix('_note')}: {v}" for k, v in paper.items() if k.endswith("_note")),
    }
    if row["paper_attn_ssm"]:
        ours = params.ssm / params.attention if params.attention else math.inf
        diff = _diff_pct(ours, ratio_value(row["paper_attn_ssm"]))
        row["attn_ssm_diff_pct"] = "" if diff is None else round(diff, 2)
    if row["paper_cache_mb"] != "":
        row["cache_diff_pct"] = round(_diff_pct(cache.mb, float(row["paper_cache_mb"])), 2)
    return row
