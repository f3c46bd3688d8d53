"""Tiny checkpoints for the eval tests: a word-level tokenizer, an untrained run directory, and a run
trained on MQAR questions (so that its score must rise above chance)."""

from __future__ import annotations

from pathlib import Path

from ablate.data import needle, synthetic
from ablate.evals.paths import evals_dir
from ablate.rundir import config_hash, write_json_atomic

VARIANT = "table3-llama3"


def _corpus(pairs: int):
    yield from synthetic.training_documents("mqar", 3000, seed=0, pairs=pairs, queries=pairs)
    yield from (e.context + e.query + e.answer for e in synthetic.eval_examples("mqar", 400, pairs=pairs))
    yield from (e.context + e.query + e.answer for e in synthetic.eval_examples("mqar", 200))
    yield from synthetic.training_documents("phonebook", 300, seed=0)
    yield from (e.context + e.query + e.answer for e in synthetic.eval_examples("phonebook", 200))
    yield from needle.training_documents(40, 400)
    for f in sorted((evals_dir() / "fixtures").glob("*.jsonl")):
        yield f.read_text()


def make_tokenizer(pairs: int = 4):
    """Words and punctuation as tokens: every MQAR key and value is one token, so a tiny model learns
    recall in few steps; words outside the corpus become <unk> (the fixtures are in it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(_corpus(pairs), trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def model_config(tokenizer):
    from ablate.registry import resolve

    overrides = {"vocab_size": len(tokenizer), "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4}
    return resolve(VARIANT, "tiny", overrides=overrides).config


def save_run(path: Path, model, tokenizer, extra: dict | None = None) -> Path:
    """A run directory as the trainer leaves it: run.json (with config_hash) and model/ + tokenizer."""
    path = Path(path)
    model.save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "model")
    info = {"variant": VARIANT, "scale": "tiny", "status": "complete", **(extra or {})}
    info["config_hash"] = config_hash(info)
    write_json_atomic(path / "run.json", info)
    return path


def make_run(path: Path, tokenizer) -> Path:
    import torch

    from ablate.model.lm import AblateForCausalLM

    torch.manual_seed(0)
    return save_run(path, AblateForCausalLM(model_config(tokenizer)), tokenizer, {"trained": False})


def train_recall_run(path: Path, tokenizer, pairs: int = 4, questions: int = 48, steps: int = 200, lr: float = 3e-3, batch: int = 16, seed: int = 0) -> Path:
    """A model that knows the answers of the first ``questions`` MQAR eval questions (the task's own
    stream: n=200, seed 0), trained with plain AdamW on those contexts with the loss on the answer.

    Why the answers and not the skill: learning MQAR as an algorithm (an induction circuit) takes far
    longer than a CPU test affords: measured, a 2-layer d=128 model on 120k fresh documents (keys and
    values from 8 each) stays at chance for 5,000 steps (the known plateau before induction heads form). What this test needs is a
    model whose knowledge lm-eval's score must follow: if gold indices, choices or documents were
    misaligned anywhere between our generator, the task YAML and lm-eval, it would score at chance."""
    import torch

    from ablate.model.lm import AblateForCausalLM

    torch.manual_seed(seed)
    examples = synthetic.eval_examples("mqar", 200, seed=0, pairs=pairs)[:questions]
    prompts = [tokenizer(e.context + e.query, add_special_tokens=False)["input_ids"] for e in examples]
    answers = [tokenizer(e.answer, add_special_tokens=False)["input_ids"] for e in examples]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    x = torch.full((len(examples), width), tokenizer.pad_token_id)
    y = torch.full((len(examples), width), -100)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        x[i, : len(p) + len(a)] = torch.tensor(p + a)
        y[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    model = AblateForCausalLM(model_config(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = model(x[idx], labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_run(path, model, tokenizer, {"trained": True, "steps": steps, "final_loss": loss.item()})
