"""What ``ablate bench`` measures: a bare variant (a fresh random-initialised model at a scale) or a
run directory's trained model; and where its result goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ablate.rundir import RunDir, RunDirError, provenance, read_json, write_json_atomic


@dataclass
class Target:
    name: str
    scale: str
    config: object  # AblateConfig
    run: RunDir | None = None
    info: dict = field(default_factory=dict)

    def build(self, dtype: torch.dtype, device) -> torch.nn.Module:
        """The model on ``device`` in ``dtype``: the run's trained weights, or a fresh random init
        (created on the device directly: a 1B model initialises in a second on a GPU)."""
        from ablate.model.lm import AblateForCausalLM

        if self.run is not None:
            model = AblateForCausalLM.from_pretrained(self.run.require_model(), dtype=dtype)
            return model.to(device).eval()
        with torch.device(device):
            model = AblateForCausalLM(self.config)
        return model.to(dtype).eval()

    def result_json(self, result: dict, kind: str = "ablate") -> dict:
        """The bench.json record (schema in ablate/rundir.py) with provenance."""
        return {
            "variant": self.name,
            "scale": self.scale,
            "kind": kind,
            **result,
            "config_hash": self.info.get("config_hash"),
            "provenance": provenance(),
        }


def resolve_target(spec: str, scale: str) -> Target:
    """A run directory (has run.json or model/config.json) or a variant name / YAML path."""
    path = Path(spec)
    if path.is_dir() and ((path / "run.json").exists() or (path / "model" / "config.json").exists()):
        from ablate.config import AblateConfig

        run = RunDir(path)
        model_dir = run.require_model()
        info = read_json(run.run_json) if run.run_json.exists() else {}
        config = AblateConfig.from_pretrained(model_dir)
        return Target(info.get("variant", path.name), info.get("scale", "?"), config, run, info)
    if path.is_dir():
        raise RunDirError(f"{path}: not a run directory (no run.json or model/config.json)")
    from ablate.registry import resolve

    v = resolve(spec, scale)
    return Target(v.name, scale, v.config)


def write_result(path: Path, record: dict) -> Path:
    write_json_atomic(path, record)
    return path
