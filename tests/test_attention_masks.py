"""Sliding-window attention, meta tokens and packed documents: what each query may see."""

import torch

from ablate.kernels import MaskSpec
from ablate.registry import build_model, resolve


def _spec(length, window, meta, **kw):
    pos = torch.arange(length).unsqueeze(0)
    return MaskSpec(pos, pos, window, meta, aligned=True, **kw)


def test_sliding_window_never_sees_past_its_window_except_meta_tokens():
    length, window, meta = 40, 6, 3
    mask = _spec(length, window, meta).dense()
    for i in range(length):
        for j in range(length):
            expected = j <= i and (i - j < window or j < meta)
            assert bool(mask[i, j]) == expected, (i, j)


def test_documents_do_not_see_each_other_but_see_meta_tokens():
    seq = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])
    mask = _spec(10, None, 2, q_seq=seq, k_seq=seq).dense()
    assert mask[5, 4] and not mask[5, 3]  # same document yes, previous document no
    assert mask[8, 0] and mask[8, 1]  # meta tokens (positions 0, 1) stay visible
    assert not mask[4, 2]


def _single_layer(name, **overrides):
    # one layer, so a token's receptive field is exactly what its attention mask allows
    variant = resolve(name, "tiny", overrides={"num_hidden_layers": 1, **overrides})
    return build_model(variant).eval(), variant.config


def test_model_output_ignores_tokens_beyond_the_window():
    # attention-only, so the mask alone decides what a position can depend on
    model, config = _single_layer("table1-10-llama-kv-compression", full_attention_layers=[])
    window = config.sliding_window
    ids = torch.randint(0, config.vocab_size, (1, 30))
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    moved = (a - b).abs().amax(-1)[0]
    assert (moved[5 : 5 + window] > 0).all(), "positions inside the window must see the change"
    assert (moved[5 + window :] == 0).all(), "positions past the window must not"
    assert (moved[:5] == 0).all()


def test_meta_tokens_stay_visible_beyond_the_window():
    model, config = _single_layer("table1-13-meta-tokens", full_attention_layers=[])
    assert config.num_meta_tokens > 0 and config.sliding_window < 30
    ids = torch.randint(0, config.vocab_size, (1, 30))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        model.model.meta_tokens[0].add_(1.0)
        after = model(input_ids=ids).logits
    # every position (far past the window too) changes when a meta token does
    assert ((before - after).abs().amax(-1) > 0).all()
