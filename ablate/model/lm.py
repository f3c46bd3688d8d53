"""The causal LM as a transformers ``PreTrainedModel``: embeddings, optional meta tokens, a stack of
blocks, final norm, (tied) LM head. Registered with AutoConfig / AutoModelForCausalLM."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ablate.config import AblateConfig, layer_plans
from ablate.model.blocks import BLOCKS
from ablate.model.cache import AblateCache, needs_rowwise_prefill, rowwise_prefill
from ablate.model.context import ForwardContext
from ablate.model.layers import RMSNorm
from ablate.model.ssm import Mamba2Mixer, MambaHeads


class AblatePreTrainedModel(PreTrainedModel):
    config_class = AblateConfig
    config: AblateConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = list(b.__name__ for b in BLOCKS.values())
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, AblateModel) and module.meta_tokens is not None:
            nn.init.normal_(module.meta_tokens, std=std)
        if isinstance(module, (MambaHeads, Mamba2Mixer)):
            module.reset_ssm_parameters()


class AblateModel(AblatePreTrainedModel):
    """The backbone: token (and meta-token) embeddings in, final hidden states out."""

    def __init__(self, config: AblateConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        m = config.num_meta_tokens
        self.meta_tokens = nn.Parameter(torch.zeros(m, config.hidden_size)) if m else None
        block = BLOCKS[config.block]
        self.layers = nn.ModuleList(block(config, plan) for plan in layer_plans(config))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        seq_idx: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """seq_idx: (b, l) document index of each token of packed training sequences: attention and
        SSM state stay within a document (meta tokens remain visible to all). Not with a cache."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        b, l, _ = inputs_embeds.shape
        m = self.config.num_meta_tokens
        cache = past_key_values
        seen = cache.seen_tokens if cache is not None else 0
        token_valid = attention_mask.bool() if attention_mask is not None else None
        if token_valid is not None:
            token_valid = token_valid[:, -l:]
            if cache is not None and needs_rowwise_prefill(self.config, cache, token_valid):
                h = rowwise_prefill(self, inputs_embeds, token_valid, cache)
                return BaseModelOutputWithPast(last_hidden_state=h, past_key_values=cache)
        if m and seen == 0:
            # meta tokens lead every sequence: learned, always visible, never padding
            meta = self.meta_tokens.to(inputs_embeds.dtype).unsqueeze(0).expand(b, -1, -1)
            inputs_embeds = torch.cat([meta, inputs_embeds], dim=1)
            if token_valid is not None:
                token_valid = torch.cat([token_valid.new_ones(b, m), token_valid], dim=1)
            prefix = m
        else:
            prefix = 0
        if token_valid is not None and bool(token_valid.all()):
            token_valid = None
        if seq_idx is not None:
            if cache is not None:
                raise ValueError("seq_idx (packed documents) is for training forwards, not with a cache")
            # meta tokens belong to the first document, so they initialise its SSM state
            seq_idx = torch.cat([seq_idx[:, :1].expand(-1, prefix), seq_idx], dim=1)
        if cache is not None and not self.config.has_attention and token_valid is None:
            positions = None  # no layer reads them: an SSM-only decode step saves their two kernels
        elif cache is not None:  # from the cache's device counter: a decode step has no Python-side position
            positions = cache.positions(inputs_embeds.shape[1], token_valid)
        else:
            positions = torch.arange(seen, seen + inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        ctx = ForwardContext(
            positions=positions,
            num_meta=m,
            head_dim=self.config.resolved_head_dim,
            rope_theta=self.config.rope_theta,
            dtype=inputs_embeds.dtype,
            token_valid=token_valid,
            cache=cache,
            seq_idx=seq_idx,
        )
        h, delta = inputs_embeds, None  # the residual stream is h + delta (ablate.model.blocks)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h, delta = self._gradient_checkpointing_func(layer.__call__, h, ctx, delta)
            else:
                h, delta = layer(h, ctx, delta)
        if cache is not None:
            cache.advance(inputs_embeds.shape[1], token_valid)
        _, h = self.norm.after_add(h[:, prefix:], None if delta is None else delta[:, prefix:])
        return BaseModelOutputWithPast(last_hidden_state=h, past_key_values=cache)


class AblateForCausalLM(AblatePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _is_stateful = True  # SSM state and ring buffers cannot be rolled back: no assisted decoding

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        """generate(): our own cache, allocated for exactly the tokens it will process (prompt +
        new tokens - 1) and seeded with the meta tokens."""
        if model_kwargs.get("past_key_values") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size, max_cache_length)
        # batch_size counts prompts; the inputs were already expanded for beams / return sequences
        rows = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1) * batch_size
        model_kwargs["past_key_values"] = AblateCache.for_model(self, rows, max_cache_length)

    def __init__(self, config: AblateConfig):
        super().__init__(config)
        self.model = AblateModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        seq_idx: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            seq_idx=seq_idx,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)


AutoConfig.register(AblateConfig.model_type, AblateConfig, exist_ok=True)
AutoModelForCausalLM.register(AblateConfig, AblateForCausalLM, exist_ok=True)
