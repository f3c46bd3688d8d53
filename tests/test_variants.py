"""Every declared variant resolves at every scale and trains one step at `tiny` on CPU."""

import math

import pytest
import torch

from ablate.bench.accounting import count_parameters
from ablate.registry import SCALES, resolve, variant_names

VARIANTS = variant_names()
REQUIRED = (
    [f"table1-{i:02d}-" for i in range(1, 14)]
    + ["table3-mamba2", "table3-mamba2-ffn", "table3-llama3", "table3-samba", "table3-hymba"]
    + ["hymba-125m", "hymba-350m", "hymba-1.5b"]
)


def test_required_variants_are_declared():
    for prefix in REQUIRED:
        assert any(v == prefix or v.startswith(prefix) for v in VARIANTS), f"missing variant {prefix}"
    assert sum(v.startswith("table1-") for v in VARIANTS) == 13


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_at_tiny(name):
    variant = resolve(name, "tiny")
    from ablate.registry import build_model

    model = build_model(variant)
    ids = torch.randint(0, variant.config.vocab_size, (2, 24))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 24, variant.config.vocab_size)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", VARIANTS)
def test_every_scale_resolves(name):
    sizes = {scale: count_parameters(resolve(name, scale).config).total for scale in SCALES}
    assert sizes["tiny"] < 1e6, "tiny must stay CPU-test sized"
    assert 10e6 <= sizes["proxy"] <= 50e6, f"proxy scale is documented as 10-50M params, got {sizes['proxy'] / 1e6:.1f}M"
    assert sizes["paper"] > sizes["proxy"]


def test_table3_models_are_apple_to_apple():
    """Table 3 compares models of one size: within 10% of each other at paper and proxy scale."""
    for scale, target in (("paper", 1.0e9), ("proxy", None)):
        sizes = [count_parameters(resolve(n, scale).config).total for n in VARIANTS if n.startswith("table3-")]
        assert max(sizes) / min(sizes) < 1.1, f"{scale}: {sizes}"
        if target:
            assert all(abs(s / target - 1) < 0.12 for s in sizes), sizes


def test_hymba_paper_sizes_match_the_appendix_table():
    # the paper's appendix: 125M / 350M / 1.52B parameters
    for name, expected in (("hymba-125m", 125e6), ("hymba-350m", 350e6), ("hymba-1.5b", 1.52e9)):
        total = count_parameters(resolve(name, "paper").config).total
        assert abs(total / expected - 1) < 0.06, f"{name}: {total / 1e6:.1f}M"
