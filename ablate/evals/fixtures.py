"""Offline fixtures: tiny local stand-ins, written by us, for the hub datasets the suites read.

A fixture replaces a *dataset*, not a task: ``evals/fixtures/<path>[__<name>].jsonl`` (the hub id with
``/`` written as ``__``) holds a few rows in that dataset's schema, and every task reading that dataset
(truthfulqa_mc1 and truthfulqa_mc2, say) reads the fixture instead when ``--fixtures`` is given. The
task keeps its own prompt, choices, metrics and Python code; only where its rows come from changes
(``dataset_path: json`` with ``data_files``), so a fixture run exercises the same code path as a hub
run. Every split the task names reads the same rows (few-shot examples may then repeat a test row:
fixtures test the path, their scores mean nothing).
"""

from __future__ import annotations

from pathlib import Path

from ablate.evals.paths import evals_dir

SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def fixtures_dir() -> Path:
    return evals_dir() / "fixtures"


def fixture_name(dataset_path: str, dataset_name: str | None) -> str:
    base = dataset_path.strip("/").replace("/", "__")
    return f"{base}__{dataset_name}" if dataset_name else base


def fixture_path(dataset_path: str | None, dataset_name: str | None) -> Path | None:
    """The fixture standing in for a hub dataset, or None when ablate ships none."""
    if not dataset_path:
        return None
    path = fixtures_dir() / f"{fixture_name(dataset_path, dataset_name)}.jsonl"
    return path if path.exists() else None


def _splits(cfg: dict) -> list[str]:
    names = [cfg.get(k) for k in SPLIT_KEYS]
    return sorted({n for n in names if isinstance(n, str) and n}) or ["test"]


def yaml_task_on_fixture(cfg: dict, fixture: Path) -> dict:
    """A YAML task's config reading ``fixture`` for every split it names."""
    out = dict(cfg)
    out["dataset_path"] = "json"
    out["dataset_name"] = None
    out["dataset_kwargs"] = {"data_files": {split: str(fixture) for split in _splits(cfg)}}
    return out


def class_task_on_fixture(cls: type, fixture: Path) -> type:
    """A Python task class (lm-eval's ``class:`` tasks, e.g. swde) reading ``fixture``: the same class
    with only the dataset it downloads changed. Such classes build their own config, so the dataset
    comes in through the class attributes and the ``download`` call, not through YAML keys."""
    files = str(fixture)

    def download(self, dataset_kwargs=None, **kwargs):
        # every split the task could ask for reads the same rows
        splits = ("train", "validation", "test")
        return cls.download(self, {"data_files": {s: files for s in splits}}, **kwargs)

    return type(cls.__name__, (cls,), {"DATASET_PATH": "json", "DATASET_NAME": None, "download": download, "__module__": cls.__module__})
