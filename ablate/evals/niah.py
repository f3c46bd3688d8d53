"""The needle suite: ablate's one needle task (evals/niah/ablate_niah.yaml) run as one lm-eval task
per context length (``ablate_niah_<length>``), so each length gets its own row in the result file
and its own batch size and maximum length.

Lengths beyond the model's trained length are evaluated as they are (the paper's Figure 10 tests
past the fine-tuning length); lm-eval's maximum length is raised to fit them, so it never truncates
the haystack, and the record says which lengths extrapolate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE_TASK = "ablate_niah"
# room for the answer's tokens after a prompt of the nominal length
ANSWER_ROOM = 64


@dataclass
class NiahGrid:
    lengths: list[int] | None = None  # None: the task YAML's metadata
    depths: list[float] | None = None
    per_cell: int | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def resolved(self, yaml_metadata: dict, limit) -> "NiahGrid":
        """This grid with the YAML's defaults filled in; ``limit`` caps documents per (length, depth)
        cell (limiting whole tasks would keep only the first depths)."""
        per_cell = int(self.per_cell if self.per_cell is not None else yaml_metadata.get("per_cell", 4))
        if limit is not None:
            per_cell = max(1, min(per_cell, int(limit)))
        return NiahGrid(
            lengths=[int(x) for x in (self.lengths or yaml_metadata.get("lengths", []))],
            depths=[float(x) for x in (self.depths or yaml_metadata.get("depths", []))],
            per_cell=per_cell,
            seed=int(self.seed if self.seed is not None else yaml_metadata.get("seed", 0)),
        )


def length_task(length: int) -> str:
    return f"{BASE_TASK}_{length}"


def overrides(base_cfg: dict, grid: NiahGrid, length: int, tokenizer_path: str) -> dict:
    """Config overrides turning the base needle task into the task for one length."""
    metadata = dict(base_cfg.get("metadata") or {})
    metadata.update({
        "lengths": [int(length)],
        "depths": list(grid.depths),
        "per_cell": grid.per_cell,
        "seed": grid.seed,
        "tokenizer": tokenizer_path,
    })
    return {"task": length_task(length), "metadata": metadata}


def lm_max_length(length: int, model_max: int) -> int:
    return max(model_max, int(length) + ANSWER_ROOM)
