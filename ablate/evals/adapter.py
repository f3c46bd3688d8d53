"""Our models as lm-eval sees them: lm-eval's own ``hf`` model (HFLM) around an ``AblateForCausalLM``
and its tokenizer, with batch size and maximum length taken from the model's config.

A run directory (``RUN_DIR/model`` as ``save_pretrained`` writes it, tokenizer beside it), a bare saved
model directory or an in-memory model all end up as the same HFLM; no scoring happens here.
"""

from __future__ import annotations

from pathlib import Path

from ablate.rundir import RunDir, RunDirError, read_json

# tokens per forward batch: batch = budget // sequence length (at least 1). One knob per device kind
# rather than per variant: eval batches only need to fit, and activations of our models at a given
# length scale with the hidden size far less than the logits (length x vocabulary) do.
TOKEN_BUDGET = {"cuda": 262_144, "cpu": 16_384}
MAX_BATCH = 64


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message is one line naming the path."""


class LoadedModel:
    """A model and its tokenizer for evaluation. From a directory (``load``) the weights are read on
    first use of ``model``, so tasks are resolved (and bad input reported) before that cost."""

    def __init__(self, model=None, tokenizer=None, model_dir: Path | None = None, run: RunDir | None = None,
                 config_hash: str | None = None, *, config=None, device: str | None = None, dtype: str = "float32"):
        if model is None and model_dir is None:
            raise ValueError("LoadedModel needs a model or a model directory")
        self._model = model
        self.tokenizer = tokenizer
        self.model_dir = model_dir  # where model and tokenizer are read from (None: in memory)
        self.run = run  # the run directory, when there is one
        self.config_hash = config_hash  # run.json's config_hash, when there is one
        self.config = config if config is not None else model.config
        self.dtype = dtype
        self.device = str(next(model.parameters()).device) if model is not None else default_device(device)

    @property
    def model(self):
        if self._model is None:
            self._model = _load_weights(self.model_dir, self.device, self.dtype)
        return self._model

    @property
    def max_length(self) -> int:
        return model_max_length(self.config)


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
    """A run directory's (or a model directory's) tokenizer and config now, its weights on first use."""
    from transformers import AutoConfig, AutoTokenizer

    import ablate.model.lm  # noqa: F401  registers AblateConfig / AblateForCausalLM with the Auto classes

    model_dir, run = resolve_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as e:
        raise ModelLoadError(f"{model_dir / 'config.json'}: not a usable model config ({_first_line(e)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise ModelLoadError(f"{model_dir}: no usable tokenizer beside the model ({_first_line(e)}); the run must save its tokenizer with the model") from None
    config_hash = None
    if run is not None:
        try:
            config_hash = read_json(run.run_json).get("config_hash")
        except RunDirError:
            config_hash = None
    return LoadedModel(None, tokenizer, model_dir, run, config_hash, config=config, device=device, dtype=dtype)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _load_weights(model_dir: Path, device: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading a small model is noise in eval's output
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except Exception as e:
        raise ModelLoadError(f"{model_dir}: cannot load the model ({_first_line(e)})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


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
