"""Cross-layer KV sharing: a consumer layer has no K/V projections, attends over its producer's K/V,
and the loss reaches the producer's K/V weights through the consumer."""

import torch

from ablate.config import layer_plans
from ablate.registry import build_model, resolve


def test_hymba_layout_pairs_only_sliding_window_layers():
    # Hymba-1.5B's public kv_reuse_group: SWA pairs, a triple after the middle full layer
    config = resolve("hymba-1.5b", "paper").config
    assert config.full_attention_layer_ids == [0, 15, 31]
    groups = {}
    for i, src in enumerate(config.kv_source):
        groups.setdefault(src, []).append(i)
    shared = sorted(g for g in groups.values() if len(g) > 1)
    assert shared == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18], [19, 20], [21, 22],
                      [23, 24], [25, 26], [27, 28], [29, 30]]
    assert all(config.kv_source[i] == i for i in (0, 15, 31))


def test_consumers_hold_no_kv_projection_and_gradients_flow_to_producers():
    variant = resolve("table1-09-kv-sharing", "tiny")
    model = build_model(variant)
    plans = layer_plans(variant.config)
    consumers = [p for p in plans if p.attention and not p.owns_kv]
    assert consumers, "the variant must share KV somewhere"
    q_width = variant.config.query_width
    for p in plans:
        rows = model.model.layers[p.index].in_proj.weight.shape[0]
        kv = variant.config.key_width + variant.config.value_width
        assert rows == q_width + (kv if p.owns_kv else 0) + 2 * variant.config.ssm_inner_size

    # the loss of a consumer layer's output reaches the producer's K/V rows
    consumer = consumers[0]
    producer = model.model.layers[consumer.kv_source]
    outputs = {}
    model.model.layers[consumer.index].register_forward_hook(lambda mod, inp, out: outputs.setdefault("c", out))
    ids = torch.randint(0, variant.config.vocab_size, (2, 20))
    model(input_ids=ids)
    x, delta = outputs["c"]  # a block returns the residual stream as x + delta
    (x + delta).pow(2).mean().backward()
    kv_rows = producer.in_proj.weight.grad[q_width : q_width + variant.config.key_width + variant.config.value_width]
    assert kv_rows.abs().sum() > 0


def test_consumer_attends_over_the_producers_keys():
    variant = resolve("table1-10-llama-kv-compression", "tiny")
    model = build_model(variant).eval()
    consumer = next(p for p in layer_plans(variant.config) if p.attention and not p.owns_kv)
    attn = model.model.layers[consumer.index].attn
    assert hasattr(attn, "q_proj") and not hasattr(attn, "qkv_proj")  # queries only
    ids = torch.randint(0, variant.config.vocab_size, (1, 16))
    captured = {}
    layer = model.model.layers[consumer.index]
    layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o[0] + o[1]))
    with torch.no_grad():
        model(input_ids=ids)
        before = captured["out"].clone()
        model.model.layers[consumer.kv_source].attn.qkv_proj.weight[-variant.config.value_width :].mul_(3.0)  # V rows
        model(input_ids=ids)
    assert not torch.allclose(before, captured["out"])
