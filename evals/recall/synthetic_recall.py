"""lm-eval ``custom_dataset`` builders for ablate's synthetic recall tasks (MQAR, phonebook).

The data comes from ``ablate.data.synthetic`` at eval time, deterministically from the task's
``metadata`` (``n``, ``seed`` and the task's size, e.g. ``pairs``), so nothing is downloaded or
stored. The test split is the generator's eval stream; the train split (few-shot examples only) is
the same stream under another seed, so few-shot examples never repeat a test question.
"""

from __future__ import annotations

import datasets

from ablate.data.synthetic import eval_examples

# keys of the generator's size arguments per task; other metadata keys are lm-eval's own
_SIZE_KEYS = {"mqar": ("pairs",), "phonebook": ("entries",)}


def _split(task: str, n: int, seed: int, size: dict) -> datasets.Dataset:
    rows = [e.to_dict() for e in eval_examples(task, n, seed=seed, **size)]
    return datasets.Dataset.from_list(rows)


def _build(task: str, kwargs: dict) -> datasets.DatasetDict:
    n = int(kwargs.get("n", 200))
    seed = int(kwargs.get("seed", 0))
    size = {k: int(kwargs[k]) for k in _SIZE_KEYS[task] if k in kwargs}
    if "num_choices" in kwargs:
        size["num_choices"] = int(kwargs["num_choices"])
    return datasets.DatasetDict(
        {"test": _split(task, n, seed, size), "train": _split(task, min(n, 32), seed + 1_000_003, size)}
    )


def mqar(**kwargs) -> datasets.DatasetDict:
    return _build("mqar", kwargs)


def phonebook(**kwargs) -> datasets.DatasetDict:
    return _build("phonebook", kwargs)
