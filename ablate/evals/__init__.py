"""Evaluation through lm-eval: the model adapter (lm-eval's HFLM), suites, task resolution, result files.

Public entry points for other stages (the sweep calls these)::

    from ablate.evals import run_suites, evaluate_model, NiahGrid
    run_suites("runs/x", ["commonsense", "recall", "niah"], limit=None, fixtures=False)
    # -> [SuiteResult(suite, path=RUN_DIR/eval/SUITE.json, record, samples_path, heatmap_path, heatmap)]
"""

from ablate.evals.adapter import LoadedModel, ModelLoadError, load, make_lm
from ablate.evals.niah import NiahGrid
from ablate.evals.results import result_path
from ablate.evals.runner import SuiteResult, evaluate_model, run_suites
from ablate.evals.suites import DEFAULT_SUITES, SUITES, SuiteError, resolve_suites
from ablate.evals.tasks import TaskError

__all__ = [
    "DEFAULT_SUITES",
    "SUITES",
    "LoadedModel",
    "ModelLoadError",
    "NiahGrid",
    "SuiteError",
    "SuiteResult",
    "TaskError",
    "evaluate_model",
    "load",
    "make_lm",
    "resolve_suites",
    "result_path",
    "run_suites",
]
