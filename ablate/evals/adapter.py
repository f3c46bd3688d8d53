"""Our models as lm-eval sees them: lm-eval's own ``hf`` model (HFLM) around an ``AblateForCausalLM``
and its tokenizer, with batch size and maximum length taken from the model's config.

A run directory (``RUN_DIR/model`` as ``save_pretrained`` writes it, tokenizer beside it), a bare saved
model directory or an in-memory model all end up as the same HFLM; no scoring happens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.rundir import RunDir, RunDirError, read_json

# tokens per forward batch: batch = budget // sequence length (at least 1). One knob per device kind
# rather than per variant: eval batches only need to fit, and activations of our models at a given
# length scale with the hidden size far less than the logits (length x vocabulary) do.
TOKEN_BUDGET = {"cuda": 262_144, "cpu": 16_384}
MAX_BATCH = 64


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message is one line naming the path."""


@dataclass
class LoadedModel:
    model: Any  # AblateForCausalLM (or any causal LM PreTrainedModel)
    tokenizer: Any
    model_dir: Path | None  # where model and tokenizer were read from (None: in memory)
    run: RunDir | None  # the run directory, when there is one
    config_hash: str | None  # run.json's config_hash, when there is one

    @property
    def max_length(self) -> int:
        return model_max_length(self.model.config)


def model_max_length(config) -> int:
    """Input tokens the model takes: its position budget less the meta tokens, which the model
    prepends itself (they are not part of the input lm-eval builds but do use positions)."""
    return int(config.max_position_embeddings) - int(getattr(config, "num_meta_tokens", 0) or 0)


def eval_batch_size(seq_len: int, device: str) -> int:
    budget = TOKEN_BUDGET["cuda" if str(device).startswith("cuda") else "cpu"]
    return max(1, min(MAX_BATCH, budget // max(1, int(seq_len))))


def resolve_model_dir(path: str | Path) -> tuple[Path, RunDir | None]:
    """A run directory's ``model/`` or a saved model directory itself."""
    path = Path(path)
    run = RunDir(path)
    if run.exists():
        try:
            return run.require_model(), run
        except RunDirError as e:
            raise ModelLoadError(str(e)) from None
    if (path / "config.json").exists():
        return path, None
    if not path.exists():
        raise ModelLoadError(f"{path}: no such run directory or model directory")
    raise ModelLoadError(f"{path}: neither a run directory (run.json) nor a saved model (config.json)")


def load(path: str | Path, device: str | None = None, dtype: str = "float32") -> LoadedModel:
    """Load a run directory's (or a model directory's) model and tokenizer onto ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ablate.model.lm  # noqa: F401  registers AblateConfig / AblateForCausalLM with the Auto classes

    from transformers.utils import logging as hf_logging

    model_dir, run = resolve_model_dir(path)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading a small model is noise in eval's output
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except Exception as e:
        raise ModelLoadError(f"{model_dir}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise ModelLoadError(f"{model_dir}: no usable tokenizer beside the model ({type(e).__name__}); the run must save its tokenizer with the model") from None
    model.to(default_device(device)).eval()
    config_hash = None
    if run is not None:
        try:
            config_hash = read_json(run.run_json).get("config_hash")
        except RunDirError:
            config_hash = None
    return LoadedModel(model, tokenizer, model_dir, run, config_hash)


def default_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_lm(model, tokenizer, *, batch_size: int | None = None, max_length: int | None = None):
    """lm-eval's HFLM around an in-memory model (on the device it already sits on)."""
    import logging

    from lm_eval.models.huggingface import HFLM

    max_length = int(max_length or model_max_length(model.config))
    device = str(next(model.parameters()).device)
    batch_size = int(batch_size or eval_batch_size(max_length, device))
    # HFLM warns that a model object makes some of its arguments moot; that is what we want
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
