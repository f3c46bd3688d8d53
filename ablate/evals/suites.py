"""The evaluation suites: which lm-eval tasks each one runs, and which metric is its headline.

Task names are lm-eval's own (or ablate's tasks in ``evals/``). The commonsense list is the paper's
(arXiv 2411.13676, Table 3: LAMBADA, PIQA, ARC-C, ARC-E, HellaSwag, WinoGrande, TruthfulQA, SIQA, the
eight tasks Table 1's "commonsense" averages) plus Wikitext perplexity (Table 3's language-modeling
column; LAMBADA perplexity comes with lambada_openai). OpenBookQA is not in the paper's lists: it has a
fixture and runs with ``--tasks openbookqa`` but is not in the suite. The headline metric is the one a
report shows; every metric lm-eval computes is kept in the result file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteTask:
    task: str
    headline: str  # metric name as lm-eval reports it (without the filter suffix)
    note: str = ""
    gen_kwargs: dict | None = None  # generation settings merged into the task's (generate_until tasks)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[SuiteTask, ...]
    keep_samples: bool = False  # write lm-eval's per-sample records beside the result file

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def headline(self, task: str) -> str | None:
        return next((t.headline for t in self.tasks if t.task == task), None)

    def gen_kwargs(self, task: str) -> dict | None:
        return next((t.gen_kwargs for t in self.tasks if t.task == task), None)


# acc vs acc_norm follows the common zero-shot convention for these tasks (acc_norm where answer
# lengths differ a lot: HellaSwag, ARC-C); the paper does not say which it reports (check).
COMMONSENSE = Suite(
    "commonsense",
    "the paper's commonsense and language-modeling tasks (Table 3), zero-shot",
    (
        SuiteTask("lambada_openai", "acc", "perplexity is Table 3's LAMBADA ppl"),
        SuiteTask("piqa", "acc"),
        SuiteTask("arc_easy", "acc"),
        SuiteTask("arc_challenge", "acc_norm"),
        SuiteTask("hellaswag", "acc_norm"),
        SuiteTask("winogrande", "acc"),
        SuiteTask("truthfulqa_mc2", "acc", "TruthfulQA: mc2 as the headline (check), mc1 kept beside it"),
        SuiteTask("truthfulqa_mc1", "acc"),
        SuiteTask("social_iqa", "acc"),
        SuiteTask("wikitext", "word_perplexity", "Table 3's Wiki ppl"),
    ),
)

RECALL = Suite(
    "recall",
    "recall-intensive tasks: SWDE and SQuAD-completion (Tables 1 and 3) and ablate's synthetic MQAR / phonebook",
    (
        SuiteTask("swde", "contains"),
        # the task class falls back to 48 new tokens (as swde uses), but lm-eval's TaskConfig fills in its
        # generic 256 first, which a model with a short context cannot fit; answers are short spans
        SuiteTask("squad_completion", "contains", gen_kwargs={"max_gen_toks": 48}),
        SuiteTask("ablate_mqar", "acc", "4 choices from the context: chance 0.25"),
        SuiteTask("ablate_phonebook", "acc", "4 choices from the context: chance 0.25"),
        SuiteTask("ablate_mqar_exact", "acc", "greedy exact match"),
        SuiteTask("ablate_phonebook_exact", "acc", "greedy exact match"),
    ),
)

# the niah suite is one lm-eval task (evals/niah/ablate_niah.yaml) run once per context length as
# ablate_niah_<length>; see ablate.evals.niah
NIAH = Suite(
    "niah",
    "needle in a haystack over context lengths and needle depths (Figure 10)",
    (SuiteTask("ablate_niah", "acc", "greedy exact match of the 7-digit needle"),),
    keep_samples=True,
)

SUITES: dict[str, Suite] = {s.name: s for s in (COMMONSENSE, RECALL, NIAH)}
DEFAULT_SUITES = ("commonsense", "recall", "niah")
CUSTOM = "custom"


class SuiteError(ValueError):
    """A suite or task selection that cannot be run; the message is one line."""


def split_names(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"a,b"``, ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for part in parts:
        for name in str(part).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def resolve_suites(suites=None, tasks=None) -> list[Suite]:
    """The suites to run.

    - no tasks: the named suites (default: commonsense, recall, niah);
    - tasks and one suite: that suite, running exactly these tasks (a subset, or other tasks such as
      one from ``--include-path``); its result file carries the suite's name;
    - tasks and no suite: a suite named ``custom``.
    """
    suite_names = split_names(suites)
    task_names = split_names(tasks)
    if not task_names:
        names = suite_names or list(DEFAULT_SUITES)
        for name in names:
            if name not in SUITES:
                close = difflib.get_close_matches(name, SUITES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SuiteError(f"--suite: unknown suite {name!r}{hint}; known: {', '.join(SUITES)}; or name any suite and pass --tasks")
        return [SUITES[n] for n in names]
    if len(suite_names) > 1:
        raise SuiteError("--tasks: give at most one --suite with --tasks (the tasks become that suite's result file)")
    name = suite_names[0] if suite_names else CUSTOM
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SuiteError(f"--suite: {name!r} is not a usable suite name (letters, digits, '-', '_')")
    base = SUITES.get(name)
    known = {t.task: t for t in base.tasks} if base else {}
    chosen = tuple(known.get(t, SuiteTask(t, "")) for t in task_names)
    description = f"{base.description} (tasks chosen with --tasks)" if base else "tasks chosen with --tasks"
    return [Suite(name, description, chosen, keep_samples=base.keep_samples if base else False)]
