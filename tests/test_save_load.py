"""Models save and load as safetensors through the transformers API and its Auto classes."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import ablate.model.lm  # noqa: F401  (registers the Auto classes)
from ablate.registry import build_model, resolve


def test_save_pretrained_round_trip(tmp_path):
    variant = resolve("table1-13-meta-tokens", "tiny")
    model = build_model(variant).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "ablate" and config.kv_source == variant.config.kv_source
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, variant.config.vocab_size, (2, 15))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # tied embeddings stay tied after loading
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
