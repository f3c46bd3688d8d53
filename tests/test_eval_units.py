"""ablate.evals pieces without a model: needle documents, suite resolution, fixtures standing in for
every hub dataset the suites read, the offline error, lm-eval results -> our rows, the heatmap."""

from __future__ import annotations

import pytest

from ablate.data.needle import make_docs, needle_sentence, question
from ablate.evals.fixtures import fixture_path
from ablate.evals.results import heatmap, heatmap_csv, metric_rows
from ablate.evals.suites import SUITES, SuiteError, resolve_suites
from ablate.evals.tasks import TaskError, build, task_manager

HUB_TASKS = [t for s in ("commonsense", "recall") for t in SUITES[s].task_names if not t.startswith("ablate_")] + ["openbookqa"]


def words(text: str) -> list[str]:
    return text.split()


# ---- needle documents -------------------------------------------------------------------------
def test_needle_documents_fit_their_length_and_place_the_needle_at_its_depth():
    docs = make_docs(words, lengths=[120, 240], depths=[0.0, 0.5, 1.0], per_cell=3, seed=1)
    assert len(docs) == 2 * 3 * 3
    for d in docs:
        n = len(words(d.prompt))
        assert n == d.length_tokens <= d.length
        assert n >= d.length - 15  # short by less than one filler sentence
        needle = needle_sentence(d.key, d.answer.strip())
        assert d.prompt.count(needle) == 1 and d.prompt.endswith(question(d.key).strip("\n").split("\n")[-1])
        haystack = d.prompt[: d.prompt.index("\nWhat is")]
        at = haystack.index(needle) / len(haystack)
        if d.depth == 0.0:
            assert haystack.startswith(needle)
        elif d.depth == 1.0:
            assert haystack.endswith(needle)
        else:
            assert 0.3 < at < 0.7
    assert [d.to_dict() for d in make_docs(words, [120], [0.5], 3, seed=1)] == [d.to_dict() for d in docs if d.length == 120 and d.depth == 0.5]


def test_needle_length_too_short_is_one_clear_error():
    with pytest.raises(ValueError, match="too short"):
        make_docs(words, lengths=[10], depths=[0.5], per_cell=1)


# ---- suites -----------------------------------------------------------------------------------
def test_suite_resolution():
    assert [s.name for s in resolve_suites()] == ["commonsense", "recall", "niah"]
    assert [s.name for s in resolve_suites("recall, niah")] == ["recall", "niah"]
    (sub,) = resolve_suites("commonsense", "piqa,arc_easy")
    assert sub.name == "commonsense" and sub.task_names == ["piqa", "arc_easy"] and sub.headline("piqa") == "acc"
    (custom,) = resolve_suites(None, "my_task")
    assert custom.name == "custom" and custom.task_names == ["my_task"]
    with pytest.raises(SuiteError, match="unknown suite 'recal'.*did you mean 'recall'"):
        resolve_suites("recal")
    with pytest.raises(SuiteError, match="at most one --suite"):
        resolve_suites("recall,niah", "piqa")


def test_commonsense_is_the_papers_task_list():
    # Table 3's commonsense columns (TruthfulQA as mc1 + mc2) and Wiki ppl; LAMBADA ppl rides on lambada_openai
    assert set(SUITES["commonsense"].task_names) == {
        "lambada_openai", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande",
        "truthfulqa_mc1", "truthfulqa_mc2", "social_iqa", "wikitext",
    }
    assert {"swde", "squad_completion"} <= set(SUITES["recall"].task_names)


# ---- tasks, fixtures, offline error -----------------------------------------------------------
@pytest.fixture(scope="module")
def tm():
    return task_manager()


def test_every_hub_task_of_the_suites_runs_on_a_fixture_through_its_own_config(tm):
    for name in HUB_TASKS:
        (task,) = build(tm, name, fixtures=True)
        docs = list(task.eval_docs)
        assert len(docs) == 6, name
        # the real task's own prompt and target code read the fixture rows
        assert task.doc_to_text(docs[0]) is not None and task.doc_to_target(docs[0]) is not None, name
        if task.config.doc_to_choice is not None:
            assert len(task.doc_to_choice(docs[0])) >= 2, name
    assert fixture_path("baber/piqa", None) is not None and fixture_path("nobody/nothing", None) is None


def test_unreachable_dataset_is_one_line_naming_task_dataset_and_the_way_out(tm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TaskError) as e:
        build(tm, "arc_challenge")
    msg = str(e.value)
    assert "\n" not in msg
    assert "task arc_challenge" in msg and "allenai/ai2_arc (ARC-Challenge)" in msg
    assert "--fixtures" in msg and "--include-path" in msg and "dataset_path: json" in msg


def test_unknown_task_and_missing_fixture(tm):
    with pytest.raises(TaskError, match="unknown task 'hellaswagg'.*did you mean hellaswag"):
        build(tm, "hellaswagg")
    with pytest.raises(TaskError, match="task race: --fixtures given, but ablate ships no fixture for dataset EleutherAI/race"):
        build(tm, "race", fixtures=True)


# ---- results ----------------------------------------------------------------------------------
def test_metric_rows_from_lm_eval_results():
    out = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.2},
            "swde": {"alias": "swde", "contains,none": 0.25, "contains_stderr,none": "N/A"},
            "gsm": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.01},
        },
        "n-samples": {"piqa": {"original": 100, "effective": 8}, "swde": {"original": 6, "effective": 6}},
    }
    rows = {(r["task"], r["metric"]): r for r in metric_rows(out)}
    assert rows[("piqa", "acc")] == {"task": "piqa", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 8}
    assert rows[("piqa", "acc_norm")]["stderr"] == 0.2
    assert rows[("swde", "contains")]["stderr"] is None
    assert rows[("gsm", "exact_match,strict-match")]["n"] is None
    assert len(rows) == 4


def test_heatmap_cells():
    rows = [
        {"length": 1024, "depth": 0.5, "acc": 1.0},
        {"length": 1024, "depth": 0.5, "acc": 0.0},
        {"length": 1024, "depth": 0.0, "acc": 1.0},
        {"length": 2048, "depth": 0.0, "acc": 0.0},
        {"task": "other", "acc": 1.0},
    ]
    cells = heatmap(rows)
    assert cells == [
        {"length": 1024, "depth": 0.0, "accuracy": 1.0, "n": 1},
        {"length": 1024, "depth": 0.5, "accuracy": 0.5, "n": 2},
        {"length": 2048, "depth": 0.0, "accuracy": 0.0, "n": 1},
    ]
    assert heatmap_csv(cells).splitlines()[0] == "length,depth,accuracy,n"
