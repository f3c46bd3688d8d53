"""Meta tokens: learned, prepended inside the model, invisible in the output, trained by backprop."""

import torch

from ablate.registry import build_model, resolve


def test_meta_tokens_are_prepended_and_trained():
    variant = resolve("table1-13-meta-tokens", "tiny")
    model = build_model(variant)
    m = variant.config.num_meta_tokens
    assert model.model.meta_tokens.shape == (m, variant.config.hidden_size)
    ids = torch.randint(0, variant.config.vocab_size, (2, 12))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape[1] == 12, "meta tokens must not appear in the output"
    out.loss.backward()
    assert model.model.meta_tokens.grad is not None and model.model.meta_tokens.grad.abs().sum() > 0


def test_meta_tokens_change_the_ssm_only_model():
    """Row 12: in a Mamba-only model the meta tokens act only through the SSM state they leave."""
    variant = resolve("table1-12-mamba-meta-tokens", "tiny")
    model = build_model(variant).eval()
    ids = torch.randint(0, variant.config.vocab_size, (1, 10))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        model.model.meta_tokens.mul_(2.0)
        after = model(input_ids=ids).logits
    assert (before - after).abs().amax(-1).min() > 0
    assert sum(p.numel() for n, p in model.named_parameters() if "meta" in n) == variant.config.num_meta_tokens * variant.config.hidden_size
