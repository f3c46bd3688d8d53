"""lm-eval ``custom_dataset`` builder for ablate's needle-in-a-haystack task.

Lengths are counted in the evaluated model's tokens, so the task needs that tokenizer: metadata
``tokenizer`` (or ``pretrained``, as lm-eval's ``--model_args`` passes it) is a local path or name
that ``AutoTokenizer.from_pretrained`` loads. ``lengths``, ``depths``, ``per_cell`` and ``seed`` choose
the grid; every document records its ``length`` and ``depth`` so per-sample results draw the
length x depth heatmap.
"""

from __future__ import annotations

import datasets

from ablate.data.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, make_docs


def _tokenizer(kwargs: dict):
    name = kwargs.get("tokenizer") or kwargs.get("pretrained")
    if not name or not isinstance(name, str):
        raise ValueError(
            "ablate_niah: metadata 'tokenizer' (a tokenizer path) is required, because lengths are "
            "counted in the model's tokens; `ablate eval` sets it, with lm_eval pass "
            "--metadata '{\"tokenizer\": \"RUN_DIR/model\"}'"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _as_list(value, cast) -> list:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    return [cast(v) for v in value]


def dataset(**kwargs) -> datasets.DatasetDict:
    tok = _tokenizer(kwargs)
    lengths = _as_list(kwargs.get("lengths", DEFAULT_LENGTHS), int)
    depths = _as_list(kwargs.get("depths", DEFAULT_DEPTHS), float)
    docs = make_docs(
        lambda text: tok(text, add_special_tokens=False)["input_ids"],
        lengths=lengths,
        depths=depths,
        per_cell=int(kwargs.get("per_cell", 4)),
        seed=int(kwargs.get("seed", 0)),
    )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([d.to_dict() for d in docs])})
