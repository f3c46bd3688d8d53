"""Task resolution: lm-eval task names -> lm-eval Task objects, from lm-eval's own task YAMLs,
ablate's ``evals/`` and any ``--include-path``; redirected to offline fixtures on request; a dataset
that cannot be reached becomes one line naming the task, the dataset and what to do.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

from ablate.evals.fixtures import class_task_on_fixture, fixture_path, yaml_task_on_fixture
from ablate.evals.paths import evals_dir

# builders that read local files rather than a hub dataset id
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


class TaskError(ValueError):
    """A task that cannot be built or run; the message is one line naming the task."""


def _load_yaml(path: Path) -> dict:
    # lm-eval's own loader: resolves `include:` chains and `!function` tags relative to each file,
    # exactly as its TaskManager does (older lm-eval had it as utils.load_yaml_config)
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # pragma: no cover - lm-eval < 0.4.10
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(str(path))
    return load_yaml(path, resolve_func=True)


@functools.lru_cache(maxsize=4)
def _cached_manager(paths: tuple[str, ...], metadata_json: str):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), metadata=json.loads(metadata_json) or None)


def task_manager(include_paths: tuple[str, ...] | list[str] = (), metadata: dict | None = None):
    """lm-eval's TaskManager over its own tasks, ``evals/`` and ``include_paths`` (later paths win
    on a name clash). ``metadata`` goes to every task, as lm-eval's ``--metadata`` does (ablate's
    synthetic tasks read their sizes from it, e.g. ``{"pairs": 4}``). Indexing every YAML takes
    seconds, so managers are cached per (paths, metadata)."""
    paths = [str(evals_dir())]
    for p in include_paths:
        path = Path(p)
        if not path.is_dir():
            raise TaskError(f"--include-path: {p}: no such directory")
        paths.append(str(path.resolve()))
    if metadata is not None and not isinstance(metadata, dict):
        raise TaskError("--metadata: must be a JSON object, e.g. '{\"pairs\": 4}'")
    return _cached_manager(tuple(paths), json.dumps(metadata or {}, sort_keys=True))


def _is_hub(dataset_path: Any) -> bool:
    if not dataset_path or not isinstance(dataset_path, str):
        return False
    return dataset_path not in LOCAL_BUILDERS and not Path(dataset_path).expanduser().exists()


def _dataset_id(cfg: dict) -> tuple[str | None, str | None]:
    if "class" in cfg:
        cls = cfg["class"]
        return getattr(cls, "DATASET_PATH", None), getattr(cls, "DATASET_NAME", None)
    if cfg.get("custom_dataset"):
        return None, None
    return cfg.get("dataset_path"), cfg.get("dataset_name")


def _describe(path: str | None, name: str | None) -> str:
    return f"{path} ({name})" if name else str(path)


def _unreachable(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain saying a dataset could not be fetched or found, if any."""
    types: list[type] = [ConnectionError, FileNotFoundError]
    try:
        from datasets.exceptions import DatasetsError

        types.append(DatasetsError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx

        types.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover
        pass
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, tuple(types)) or type(exc).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def unknown_task_error(tm, name: str) -> TaskError:
    close = difflib.get_close_matches(name, tm.all_tasks, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return TaskError(f"--tasks: unknown task {name!r} (not in lm-eval's tasks, ablate's evals/ or an --include-path){hint}")


def task_config(tm, name: str) -> dict | None:
    """A task's full config (includes merged, functions resolved), or None for a group or tag."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None:
        raise unknown_task_error(tm, name)
    if entry.kind not in (Kind.TASK, Kind.PY_TASK) or entry.yaml_path is None:
        return None
    try:
        return _load_yaml(Path(entry.yaml_path))
    except Exception as e:  # a broken user YAML: name the file
        raise TaskError(f"task {name}: {entry.yaml_path}: cannot be read ({_first_line(e)})") from None


def _apply_fixture(name: str, cfg: dict) -> dict:
    path, ds_name = _dataset_id(cfg)
    if not _is_hub(path):
        return cfg  # local or generated data: nothing to stand in for
    fixture = fixture_path(path, ds_name)
    if fixture is None:
        raise TaskError(f"task {name}: --fixtures given, but ablate ships no fixture for dataset {_describe(path, ds_name)} (evals/fixtures/ has none); drop --fixtures for this task or add one")
    if "class" in cfg:
        return {**cfg, "class": class_task_on_fixture(cfg["class"], fixture)}
    return yaml_task_on_fixture(cfg, fixture)


def build(tm, name: str, *, fixtures: bool = False, overrides: dict | None = None) -> list:
    """lm-eval Task (or Group) objects for one name. ``overrides`` replace config keys (ablate uses
    them to derive per-length needle tasks); ``fixtures`` reads ablate's fixture for hub datasets."""
    cfg = task_config(tm, name)
    spec: Any
    if cfg is None:
        if overrides:
            raise TaskError(f"task {name}: a group or tag cannot take config overrides")
        if fixtures:
            from lm_eval.tasks._index import Kind

            entry = tm.task_index[name]
            if entry.kind is Kind.TAG:  # a tag is a list of tasks: redirect each
                return [obj for member in sorted(entry.tags) for obj in build(tm, member, fixtures=True)]
        spec, ds = name, (None, None)
    else:
        if overrides:
            cfg = {**cfg, **overrides}
        ds = _dataset_id(cfg)
        spec = _apply_fixture(name, cfg) if fixtures else cfg
    try:
        loaded = tm.load([spec])
    except Exception as e:
        cause = _unreachable(e)
        if cause is not None:
            where = _describe(*ds) if ds[0] else "its dataset"
            raise TaskError(
                f"task {name}: dataset {where} is not available offline ({_first_line(cause)}); "
                f"download it once with network access (HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 ablate eval ...), "
                f"run on ablate's offline fixtures with --fixtures, or pass --include-path DIR with a YAML for {name} "
                f"that reads a local copy (include: the task's YAML; dataset_path: json; dataset_kwargs: {{data_files: ...}})"
            ) from None
        raise TaskError(f"task {name}: cannot be built ({_first_line(e)})") from None
    groups = list(loaded.get("groups", {}).values())
    top = [g for g in groups if not any(g is not other and g.name in getattr(other, "child_names", []) for other in groups)]
    return top or list(loaded["tasks"].values())
