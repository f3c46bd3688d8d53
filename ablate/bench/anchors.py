"""The baseline a user would pick instead: `transformers`' own LlamaForCausalLM / Mamba2ForCausalLM
at one of our variants' shapes, measured with the same protocol through ``generate()``.

The configs are the reverse of ``ablate.model.hf_import`` (so ``from_transformers`` of the anchor
gives back our variant's config). Timing follows shared/gpu-anchors.md: ``generate()`` with default
settings, greedy, random prompts; prefill = time of prompt + 1 new token; decode rate = gen tokens
per sequence over (time of prompt + 1 + gen tokens - time of prompt + 1 token), both read from one
``generate()`` call by timestamping each token as it is chosen.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ablate.bench.accounting import cache_bytes
from ablate.bench.throughput import Protocol, decode_bound, random_prompts, sync, weight_bytes, with_batch_halving
from ablate.config import AblateConfig

ANCHOR_FAMILIES = ("llama", "mamba2")


def anchor_family(config: AblateConfig) -> str | None:
    """Which `transformers` class computes this config, or None."""
    plain_attention = config.block == "attention" and config.sliding_window is None and config.kv_source == list(range(config.num_hidden_layers))
    if plain_attention and config.num_meta_tokens == 0 and config.v_head_dim in (None, config.resolved_head_dim) and not config.attention_bias:
        return "llama"
    if config.block == "ssm" and config.ssm_type == "mamba2" and not config.ffn and config.num_meta_tokens == 0:
        return "mamba2"
    return None


def hf_llama_config(c: AblateConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.resolved_head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=c.attention_bias,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )


def hf_mamba2_config(c: AblateConfig):
    from transformers import Mamba2Config

    return Mamba2Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        expand=c.ssm_expand,
        state_size=c.ssm_state_size,
        head_dim=c.ssm_head_dim,
        num_heads=c.ssm_num_heads,
        n_groups=c.ssm_n_groups,
        conv_kernel=c.ssm_conv_kernel,
        chunk_size=c.ssm_chunk_size,
        use_bias=c.ssm_bias,
        use_conv_bias=c.ssm_conv_bias,
        layer_norm_epsilon=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )


class _StepClock(LogitsProcessor):
    """Timestamps each generated token (after the device finishes it); changes no score. generate()
    already synchronises every step to check its stopping criteria, so this adds no stall."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def build_anchor(config: AblateConfig, dtype: torch.dtype, device):
    """A random-initialised `transformers` model with this config's shape, on ``device`` in ``dtype``."""
    family = anchor_family(config)
    if family == "llama":
        from transformers import LlamaForCausalLM

        hf_config = hf_llama_config(config)
        hf_config._attn_implementation = "sdpa"
        cls = LlamaForCausalLM
    elif family == "mamba2":
        from transformers import Mamba2ForCausalLM

        hf_config, cls = hf_mamba2_config(config), Mamba2ForCausalLM
    else:
        raise ValueError(f"no transformers anchor for block {config.block!r} with this config (Llama or Mamba2 shapes only)")
    with torch.device(device):
        model = cls(hf_config)
    return model.to(dtype).eval()


def bench_anchor(model, config: AblateConfig, protocol: Protocol, progress=None) -> dict:
    """Measure a `transformers` model with ``generate()``, halving the batch on OOM."""
    say = progress or (lambda message: None)
    result, failed = with_batch_halving(lambda b: _bench_anchor_once(model, config, protocol, b, say), protocol.batch, on_oom=lambda b: say(f"out of memory at batch {b}: halving"))
    result["oom_batches"] = failed
    return result


@torch.no_grad()
def _bench_anchor_once(model, config: AblateConfig, protocol: Protocol, batch: int, say) -> dict:
    device = torch.device(protocol.device)
    P, G = protocol.prompt_len, protocol.gen_tokens
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prompts = random_prompts(batch, P, config.vocab_size, protocol.seed, device)
    mask = torch.ones_like(prompts)

    clock = _StepClock(device)
    say(f"batch {batch}: generate {1 + G} tokens")
    sync(device)
    began = time.perf_counter()
    out = model.generate(
        prompts,
        attention_mask=mask,
        max_new_tokens=1 + G,
        min_new_tokens=1 + G,
        do_sample=False,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([clock]),
    )
    sync(device)
    if out.shape[1] != P + 1 + G or len(clock.times) != 1 + G:
        raise RuntimeError(f"generate() produced {out.shape[1] - P} tokens, expected {1 + G}")
    t_first = clock.times[0] - began  # prompt + 1 token
    t_decode = clock.times[-1] - clock.times[0]  # the next G tokens
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    decode_rate = batch * G / t_decode
    elem = torch.finfo(protocol.torch_dtype).bits // 8
    held = cache_bytes(config, P + G, elem).total * batch
    weights = weight_bytes(model)
    bound = decode_bound(weights, held, batch, protocol.bandwidth)
    return {
        "protocol": {
            "prompt_len": P,
            "gen_tokens": G,
            "batch_requested": protocol.batch,
            "batch": batch,
            "dtype": protocol.dtype,
            "device": protocol.device,
            "greedy": True,
            "bandwidth_bytes_per_s": protocol.bandwidth,
            "decode_timing": "one generate(): gen tokens over (time of token 1 + gen - time of token 1)",
        },
        "prefill_tokens_per_s": batch * P / t_first,
        "decode_tokens_per_s": decode_rate,
        "decode_bound_tokens_per_s": bound,
        "decode_bound_fraction": decode_rate / bound,
        "decode_tokens_per_s_median_step": batch / statistics.median(steps),
        "decode_step_ms": t_decode / G * 1e3,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "cache_mb_measured": None,
        "cache_mb_analytic": cache_bytes(config, P + G, elem).total / 1e6,
        "cache_tokens": P + G,
        "cache_mb_prompt_fp16": cache_bytes(config, P).mb,
        "weight_bytes": weights,
        "cache_bytes": held,
        "graph": False,
        "params": sum(p.numel() for p in model.parameters()),
    }
