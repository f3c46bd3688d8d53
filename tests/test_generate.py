"""``model.generate()`` runs on our cache for every variant: greedy generation equals manual
token-by-token greedy decoding, and a left-padded batch gives each row what it gets alone."""

import pytest
import torch

from ablate.bench.accounting import cache_bytes
from ablate.model.cache import AblateCache
from ablate.registry import build_model, variant_names

VARIANTS = variant_names()
NEW = 10  # beyond the tiny window (8)


def _generate(model, ids, mask, **kwargs):
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True, **kwargs
    )


@pytest.mark.parametrize("name", VARIANTS)
def test_generate_equals_manual_greedy(name):
    model = build_model(name, "tiny").eval()
    ids = torch.randint(1, model.config.vocab_size, (3, 9))
    with torch.no_grad():
        out = _generate(model, ids, torch.ones_like(ids))
        cache = AblateCache.for_model(model, 3, 9 + NEW - 1)
        logits = model(ids, past_key_values=cache).logits[:, -1]
        tokens, manual_logits = [], []
        for i in range(NEW):
            manual_logits.append(logits)
            tokens.append(logits.argmax(-1, keepdim=True))
            if i < NEW - 1:
                logits = model(tokens[-1], past_key_values=cache).logits[:, -1]
    assert torch.equal(out.sequences[:, 9:], torch.cat(tokens, 1))
    torch.testing.assert_close(torch.stack(out.logits, 1), torch.stack(manual_logits, 1), atol=1e-4, rtol=1e-4)
    # generate() allocated our cache for exactly the tokens it processed
    returned = out.past_key_values
    assert isinstance(returned, AblateCache)
    assert returned.capacity == 9 + NEW - 1
    assert returned.nbytes() == 3 * cache_bytes(model.config, 9 + NEW - 1, 4).total


@pytest.mark.parametrize("name", VARIANTS)
def test_left_padded_batch_matches_each_row_alone(name):
    model = build_model(name, "tiny").eval()
    lengths = [11, 7, 3]
    width = max(lengths)
    rows = [torch.randint(1, model.config.vocab_size, (n,)) for n in lengths]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    with torch.no_grad():
        batched = _generate(model, ids, mask)
        for i, row in enumerate(rows):
            alone = _generate(model, row[None], torch.ones(1, len(row), dtype=torch.long))
            torch.testing.assert_close(
                torch.stack([step[i] for step in batched.logits]), torch.stack([step[0] for step in alone.logits]), atol=1e-4, rtol=1e-4
            )
            assert torch.equal(batched.sequences[i, width:], alone.sequences[0, len(row) :])


def test_generate_without_cache_gives_the_same_tokens():
    model = build_model("table1-13-meta-tokens", "tiny").eval()
    ids = torch.randint(1, model.config.vocab_size, (2, 6))
    with torch.no_grad():
        cached = _generate(model, ids, torch.ones_like(ids))
        uncached = _generate(model, ids, torch.ones_like(ids), use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)


def test_generate_rejects_assisted_decoding_it_cannot_roll_back():
    model = build_model("table3-mamba2", "tiny").eval()
    cache = AblateCache.for_model(model, 1, 4)
    assert not cache.is_croppable
    with pytest.raises(NotImplementedError, match="roll back"):
        cache.crop(1)


@pytest.mark.parametrize("name", ["table1-13-meta-tokens", "table3-mamba2"])
def test_beam_search_reorders_the_cache(name):
    """Beams expand the batch before the cache is made, and reorder it every step."""
    model = build_model(name, "tiny").eval()
    ids = torch.randint(1, model.config.vocab_size, (2, 7))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)

