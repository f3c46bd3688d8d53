"""Build an ablate model from a `transformers` Llama, Mamba or Mamba2 model, with the same weights.

Used to prove our variants compute what `transformers` computes (tests/test_parity_transformers.py),
and to start an ablation from a public checkpoint of one of those families.
"""

from __future__ import annotations

import re

import torch

from ablate.config import AblateConfig


def _llama_config(c) -> dict:
    return dict(
        block="attention",
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None),
        attention_bias=c.attention_bias,
        rope_theta=(getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        rms_norm_eps=c.rms_norm_eps,
    )


def _ssm_config(c) -> dict:
    """The fields Mamba and Mamba2 configs name alike."""
    return dict(
        block="ssm",
        ffn=False,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        ssm_expand=c.expand,
        ssm_state_size=c.state_size,
        ssm_conv_kernel=c.conv_kernel,
        ssm_bias=c.use_bias,
        ssm_conv_bias=c.use_conv_bias,
        rms_norm_eps=c.layer_norm_epsilon,
    )


def _mamba_config(c) -> dict:
    return _ssm_config(c) | dict(ssm_type="mamba", ssm_dt_rank=c.time_step_rank)


def _mamba2_config(c) -> dict:
    return _ssm_config(c) | dict(ssm_type="mamba2", ssm_head_dim=c.head_dim, ssm_n_groups=c.n_groups, ssm_chunk_size=c.chunk_size)


_CONFIGS = {"llama": _llama_config, "mamba": _mamba_config, "mamba2": _mamba2_config}


# (pattern, replacement) applied in order: `transformers` parameter names -> ours
_RENAMES = {
    "llama": [
        (r"\.input_layernorm\.", ".attn_norm."),
        (r"\.self_attn\.", ".attn."),
        (r"\.post_attention_layernorm\.", ".ffn.norm."),
        (r"\.mlp\.", ".ffn.ffn."),
    ],
    "mamba": [
        (r"^backbone\.embeddings\.", "model.embed_tokens."),
        (r"^backbone\.norm_f\.", "model.norm."),
        (r"^backbone\.layers\.(\d+)\.norm\.", r"model.layers.\1.ssm_norm."),
        (r"^backbone\.layers\.(\d+)\.mixer\.(in_proj|out_proj)\.", r"model.layers.\1.ssm.\2."),
        (r"^backbone\.layers\.(\d+)\.mixer\.conv1d\.", r"model.layers.\1.ssm.heads.conv_"),
        (r"^backbone\.layers\.(\d+)\.mixer\.", r"model.layers.\1.ssm.heads."),
    ],
    "mamba2": [
        (r"^backbone\.embeddings\.", "model.embed_tokens."),
        (r"^backbone\.norm_f\.", "model.norm."),
        (r"^backbone\.layers\.(\d+)\.norm\.", r"model.layers.\1.ssm_norm."),
        (r"^backbone\.layers\.(\d+)\.mixer\.conv1d\.", r"model.layers.\1.ssm.conv_"),
        (r"^backbone\.layers\.(\d+)\.mixer\.", r"model.layers.\1.ssm."),
    ],
}


# our projections that are several of theirs side by side: (pattern naming a part, packed name, parts in order)
_PACKED = [
    (re.compile(r"\.attn\.(q|k|v)_proj\."), ".attn.qkv_proj.", ["q", "k", "v"]),
    (re.compile(r"\.ffn\.ffn\.(gate|up)_proj\."), ".ffn.ffn.gate_up_proj.", ["gate", "up"]),
]


def _packed(name: str) -> tuple[str, int, int] | None:
    """(our packed parameter, this part's place in it, parts in all) for a part of a packed one."""
    for pattern, packed, parts in _PACKED:
        found = pattern.search(name)
        if found:
            return pattern.sub(packed, name), parts.index(found.group(1)), len(parts)
    return None


def _rename(model_type: str, name: str) -> str:
    """Our parameter name for a `transformers` one."""
    for pattern, replacement in _RENAMES[model_type]:
        name = re.sub(pattern, replacement, name)
    return name


def from_transformers(hf_model, **overrides):
    """An ``AblateForCausalLM`` computing the same function as a `transformers` LlamaForCausalLM,
    MambaForCausalLM or Mamba2ForCausalLM."""
    from ablate.model.lm import AblateForCausalLM

    c = hf_model.config
    if c.model_type not in _CONFIGS:
        raise ValueError(f"cannot import model_type {c.model_type!r}; supported: {', '.join(_CONFIGS)}")
    fields = _CONFIGS[c.model_type](c)
    fields.update(
        vocab_size=c.vocab_size,
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        max_position_embeddings=getattr(c, "max_position_embeddings", 8192) or 8192,
    )
    fields.update(overrides)
    model = AblateForCausalLM(AblateConfig(**fields)).to(hf_model.dtype)
    ours = model.state_dict()
    values, pieces = {}, {}
    for name, tensor in hf_model.state_dict().items():
        if "rotary_emb" in name:
            continue
        target = _rename(c.model_type, name)
        value = tensor.squeeze(1) if name.endswith("conv1d.weight") else tensor  # (c, 1, k) -> (c, k)
        packed = _packed(target)
        if packed is None:
            values[target] = value
        else:
            pieces.setdefault(packed[0], [None] * packed[2])[packed[1]] = value
    for target, parts in pieces.items():
        if any(p is None for p in parts):
            raise KeyError(f"{target!r}: the {c.model_type} model lacks some of its parts")
        values[target] = torch.cat(parts)
    loaded = set()
    for target, value in values.items():
        if target not in ours:
            raise KeyError(f"no parameter {target!r} in our model for the {c.model_type} weights")
        with torch.no_grad():
            ours[target].copy_(value)
        loaded.add(target)
    missing = [n for n in ours if n not in loaded and not (n == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing:
        raise KeyError(f"parameters not set from the {c.model_type} model: {missing[:5]}")
    return model
