"""Mean vs concat fusion of the hybrid-head block's attention and SSM branches."""

import torch

from ablate.registry import build_model, resolve


def _block(name):
    variant = resolve(name, "tiny")
    return build_model(variant), variant.config


def test_mean_fusion_averages_normalized_branches_of_one_width():
    model, c = _block("table1-09-kv-sharing")
    block = model.model.layers[0]
    assert block.fusion == "mean"
    assert block.out_proj.in_features == c.ssm_inner_size
    assert block.attn_out_norm.weight.shape == (c.attention_width,)  # beta_1
    assert block.ssm_out_norm.weight.shape == (c.ssm_inner_size,)  # beta_2


def test_concat_fusion_projects_both_branches():
    model, c = _block("table1-11-concat-fusion")
    block = model.model.layers[0]
    assert block.fusion == "concat" and block.attn_proj is None
    assert block.out_proj.in_features == c.attention_width + c.ssm_inner_size
    captured = {}
    block.out_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    ids = torch.randint(0, c.vocab_size, (2, 7))
    model(input_ids=ids)
    assert captured["in"].shape[-1] == c.attention_width + c.ssm_inner_size


def test_mean_fusion_is_the_average_of_the_branches():
    model, c = _block("hymba-1.5b")  # V heads as wide as the SSM: no width adapter
    block = model.model.layers[0]
    assert block.attn_proj is None and c.attention_width == c.ssm_inner_size
    seen = {}
    block.attn_out_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    block.ssm_out_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o))
    block.out_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("fused", i[0]))
    model(input_ids=torch.randint(0, c.vocab_size, (1, 9)))
    assert torch.allclose(seen["fused"], (seen["a"] + seen["s"]) / 2)
