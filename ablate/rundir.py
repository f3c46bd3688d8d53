"""The run directory: what every stage reads and writes, and how it is kept consistent.

::

    RUN_DIR/
      run.json            variant, scale, overrides, the resolved model config, train settings,
                          config_hash, provenance, status (running | complete | failed)
      model/              the trained model as `save_pretrained` writes it (config.json,
                          model.safetensors) plus its tokenizer: what `from_pretrained` and lm-eval load
      checkpoints/        sharded training checkpoints (torch.distributed.checkpoint), one folder per
                          step, each written under a temporary name and renamed when complete
      metrics.jsonl       one JSON object per logged step (step, tokens, loss, lr, tokens_per_s, ...)
      eval/SUITE.json     one lm-eval result file per suite; per-sample records beside it
      bench.json          throughput, memory and cache measurements

Result schemas (each also carries ``config_hash`` and ``provenance``)::

    metrics.jsonl   {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"}
                    and, at evaluation steps, {"step", "tokens", "val_loss"}
    eval/SUITE.json {"suite", "lm_eval_version", "limit", "num_fewshot",
                     "results": [{"task", "metric", "value", "stderr", "n"}, ...]}
    bench.json      {"variant", "scale", "protocol": {"prompt_len", "gen_tokens", "batch_requested",
                     "batch", "dtype", "device"}, "prefill_tokens_per_s", "decode_tokens_per_s",
                     "decode_bound_tokens_per_s", "peak_memory_gb", "cache_mb_measured",
                     "cache_mb_analytic"}

Every JSON file is written atomically (a temporary file, then a rename), so a crash never leaves a
half-written result; each stage's result records the ``config_hash`` it was produced under, so a sweep
reruns a stage when the config changed and skips it when it did not.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
METRICS = "metrics.jsonl"
EVAL_DIR = "eval"
BENCH_JSON = "bench.json"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names the path."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list is what makes a rename durable);
    best effort: filesystems that refuse it are left alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old one or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON through ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def config_hash(data: Any) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def git_sha(short: bool = True) -> str:
    """The checkout's commit (with '-dirty' when it has uncommitted changes), or 'unknown'.
    ``ABLATE_GIT_SHA`` overrides it: a copied working tree (a lent GPU machine) may carry a stale
    .git, so the sender passes the commit it sent."""
    if os.environ.get("ABLATE_GIT_SHA"):
        return os.environ["ABLATE_GIT_SHA"]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not sha:
        return "unknown"
    return (sha[:10] if short else sha) + ("-dirty" if dirty else "")


def device_name() -> str:
    """The accelerator results were measured on, in words (or the CPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    except Exception:  # pragma: no cover - torch import problems are reported elsewhere
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance() -> dict:
    """Where a result came from: date, git sha, device, the command line, library versions."""
    import torch
    import transformers

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "device": device_name(),
        "command": " ".join(["ablate" if i == 0 and a.endswith("ablate") else a for i, a in enumerate(sys.argv)]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        # kernel choices forced through the environment (ablate.kernels.backend); empty: every op on auto
        "backend_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("ABLATE_") and k.endswith("_BACKEND")},
    }


class RunDir:
    """One run's directory. Creating the object touches nothing; stages create what they write."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- layout ---------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def eval_path(self, suite: str) -> Path:
        return self.eval_dir / f"{suite}.json"

    @property
    def bench_path(self) -> Path:
        return self.path / BENCH_JSON

    # ---- state ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.exists()

    def info(self) -> dict:
        """run.json, or a one-line error naming the directory."""
        if not self.run_json.exists():
            raise RunDirError(f"{self.path}: not a run directory (no {RUN_JSON}); `ablate train` creates one")
        return read_json(self.run_json)

    def update_info(self, **fields) -> dict:
        info = self.info() if self.exists() else {}
        info.update(fields)
        write_json_atomic(self.run_json, info)
        return info

    def has_model(self) -> bool:
        return (self.model_dir / "config.json").exists()

    def require_model(self) -> Path:
        if not self.has_model():
            raise RunDirError(f"{self.model_dir}: no trained model (config.json missing); train the run first or pass a variant")
        return self.model_dir

    def metrics(self) -> list[dict]:
        """metrics.jsonl as a list; a torn last line (a crash mid-write) is skipped."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def append_metrics(self, row: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
            f.flush()

    def stage_done(self, result_path: Path, expected_hash: str | None) -> bool:
        """A stage result exists and was produced under ``expected_hash`` (None: any hash)."""
        if not Path(result_path).exists():
            return False
        try:
            data = read_json(result_path)
        except RunDirError:
            return False
        return expected_hash is None or data.get("config_hash") == expected_hash
