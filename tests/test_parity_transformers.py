"""Our Llama, Mamba and Mamba2 variants compute what `transformers`' own implementations compute,
given the same weights (code no one here wrote is the judge)."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from ablate.model.hf_import import from_transformers


def _llama(tie: bool):
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie, rope_theta=500000.0,
        )
    )


def _mamba():
    return MambaForCausalLM(MambaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4))


def _mamba2():
    return Mamba2ForCausalLM(
        Mamba2Config(
            vocab_size=96, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=16, num_heads=4,
            n_groups=2, chunk_size=8, conv_kernel=4,
        )
    )


def _perturb(model):
    # norms start at one and biases at zero: move them so a mis-mapped one shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize(
    "make, expected_block",
    [(lambda: _llama(False), "attention"), (lambda: _llama(True), "attention"), (_mamba, "ssm"), (_mamba2, "ssm")],
    ids=["llama", "llama-tied", "mamba", "mamba2"],
)
def test_logits_match_transformers(make, expected_block, backend, monkeypatch):
    for op in ("ATTENTION", "SELECTIVE_SCAN", "SSD", "CONV1D"):
        monkeypatch.setenv(f"ABLATE_{op}_BACKEND", backend)
    theirs = _perturb(make())
    ours = from_transformers(theirs).eval()
    assert ours.config.block == expected_block
    ids = torch.randint(0, theirs.config.vocab_size, (2, 21))  # 21: not a multiple of the SSD chunk
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(input_ids=ids).logits
    diff = (expected - got).abs().max().item()
    print(f"{theirs.config.model_type} ({backend}): max |logit diff| = {diff:.2e}")
    assert diff < 1e-4 * max(1.0, expected.abs().max().item())


def test_padding_matches_transformers_llama():
    """Left padding: the valid positions' logits equal transformers' with the same attention mask."""
    theirs = _perturb(_llama(False))
    ours = from_transformers(theirs).eval()
    ids = torch.randint(0, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(expected[mask.bool()], got[mask.bool()], atol=1e-5)
