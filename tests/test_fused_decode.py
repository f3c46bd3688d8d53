"""The decode step with its elementwise functions compiled (``ablate.model.elementwise``, on by
default on GPU) gives the logits of the step as written, on CPU through the same ``torch.compile``."""

import pytest
import torch

from ablate.model.cache import AblateCache, meta_seed
from ablate.model.elementwise import fused_elementwise
from ablate.model.layers import add_rms_norm, rms_norm
from ablate.model.lm import AblateForCausalLM
from ablate.model.static_decode import StaticGreedyDecoder
from ablate.registry import resolve


def test_fusable_runs_compiled_only_inside_the_context(monkeypatch):
    from ablate.model import elementwise

    norm = elementwise.fusable(rms_norm.reference)  # a fresh wrapper: nothing compiled yet
    calls = []
    real = torch.compile

    def spy(fn, **kwargs):
        calls.append(fn.__name__)
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    x, w = torch.randn(3, 8), torch.randn(8)
    plain = norm(x, w, 1e-5)
    assert calls == []
    with fused_elementwise():
        fused = norm(x, w, 1e-5)
    assert calls == ["rms_norm"]
    torch.testing.assert_close(fused, plain)


def test_many_widths_do_not_exhaust_the_recompile_limit(monkeypatch):
    """Parameters keep static shapes, so every norm width is its own graph: a benchmark suite meets
    far more than dynamo's default limit of 8 (which, with fullgraph, is a hard error). Dynamo's
    eager backend: the same graphs and guards without code generation, so the test stays fast."""
    from ablate.model import elementwise

    monkeypatch.setattr(elementwise, "BACKEND", "eager")
    norm = elementwise.fusable(rms_norm.reference)
    with fused_elementwise():
        for width in range(4, 16):
            x, w = torch.randn(2, width), torch.nn.Parameter(torch.randn(width))
            torch.testing.assert_close(norm(x, w, 1e-5), rms_norm.reference(x, w, 1e-5))


def test_fused_residual_add_rounds_the_sum_like_the_unfused_add():
    """The residual stream is kept in the model's dtype: fused, the norm reads the sum as stored."""
    x, delta, w = (torch.randn(4, 256).bfloat16() * 4 for _ in range(3))
    with fused_elementwise():
        total, normed = add_rms_norm(x, delta, w, 1e-5)
        alone = rms_norm(x + delta, w, 1e-5)
    assert torch.equal(total, x + delta)
    assert torch.equal(normed, alone)


@pytest.mark.parametrize("variant", ["table1-13-meta-tokens", "table3-mamba2", "table1-10-llama-kv-compression"])
def test_fused_decode_matches_the_written_step(variant):
    """Hymba (RoPE, SWA ring, KV sharing, meta tokens, Mamba heads, seven norms), Mamba2 (gated
    group norm, softplus dt) and Llama blocks with SWA and KV sharing (packed projections, RoPE on
    queries alone in the sharing layers): greedy steps with and without fusion give the same logits."""
    torch.manual_seed(0)
    model = AblateForCausalLM(resolve(variant, "tiny", overrides={"num_hidden_layers": 3}).config).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    runs = []
    for fuse in (False, True):
        cache = AblateCache.for_model(model, 2, 9 + 4, torch.float32, torch.device("cpu"))
        if model.config.num_meta_tokens:
            cache.reset(meta_seed(model, torch.float32, torch.device("cpu")))
        decoder = StaticGreedyDecoder(model, cache, use_graph=False, fuse=fuse)
        with torch.no_grad():
            first = model(ids, past_key_values=cache, logits_to_keep=1).logits[:, -1]
        decoder.start(first.argmax(-1, keepdim=True))
        runs.append(torch.stack([decoder.step().clone() for _ in range(4)]))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-5)
