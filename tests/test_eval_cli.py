"""`ablate eval` end to end on tiny checkpoints, offline: every suite over the fixtures, an unseen task
YAML through --include-path, a model trained on the synthetic recall questions above chance where an
untrained one is not, and bad input as one line. lm-eval does all the scoring; the tests read the result files."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from eval_support import make_run, make_tokenizer, train_recall_run
from typer.testing import CliRunner

from ablate.cli import app
from ablate.rundir import RunDir, read_json

MQAR_SIZE = {"pairs": 4}  # four key-value pairs: four choices, chance 0.25


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, tokenizer) -> Path:
    return make_run(tmp_path_factory.mktemp("untrained") / "run", tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer) -> Path:
    return train_recall_run(tmp_path_factory.mktemp("trained") / "run", tokenizer, **MQAR_SIZE)


def run_eval(*args: str):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result


def rows_by_task(record: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in record["results"]:
        out.setdefault(r["task"], {})[r["metric"]] = r
    return out


def test_every_suite_on_the_offline_fixtures(untrained):
    result = run_eval(
        untrained, "--suite", "commonsense,recall,niah", "--fixtures", "--limit", "4",
        "--niah-lengths", "64,128", "--niah-depths", "0,0.5,1", "--niah-per-cell", "2", "--metadata", json.dumps(MQAR_SIZE),
    )
    assert result.exit_code == 0, result.output
    eval_dir = RunDir(untrained).eval_dir
    assert not (eval_dir / "commonsense.json").exists()  # fixture numbers never pose as real ones
    expected_hash = read_json(untrained / "run.json")["config_hash"]
    import lm_eval

    for suite in ("commonsense", "recall", "niah"):
        record = read_json(eval_dir / f"{suite}.fixtures.json")
        assert record["suite"] == suite and record["fixtures"] is True and record["limit"] == 4
        assert record["lm_eval_version"] == lm_eval.__version__
        assert record["config_hash"] == expected_hash and record["provenance"]["git_sha"]
        for row in record["results"]:
            assert set(row) == {"task", "metric", "value", "stderr", "n"}
            assert row["value"] is None or math.isfinite(row["value"])
        tasks = rows_by_task(record)
        for task, metric in record["headline"].items():
            assert metric in tasks[task], (suite, task)
    cs = rows_by_task(read_json(eval_dir / "commonsense.fixtures.json"))
    assert set(cs) == {"lambada_openai", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "truthfulqa_mc1", "truthfulqa_mc2", "social_iqa", "wikitext"}
    assert all(m["n"] == 4 for t in cs.values() for m in t.values())
    assert cs["wikitext"]["word_perplexity"]["value"] > 1 and cs["lambada_openai"]["perplexity"]["value"] > 1
    # an untrained model: multiple choice near chance (0.25 to 0.5 per task; 36 questions together)
    mc = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "social_iqa", "truthfulqa_mc1"]
    chance = {"piqa": 1 / 2, "winogrande": 1 / 2, "social_iqa": 1 / 3, "truthfulqa_mc1": 1 / 3}
    mean_acc = sum(cs[t]["acc"]["value"] for t in mc) / len(mc)
    mean_chance = sum(chance.get(t, 1 / 4) for t in mc) / len(mc)
    assert abs(mean_acc - mean_chance) < 0.25
    rc = rows_by_task(read_json(eval_dir / "recall.fixtures.json"))
    assert {"swde", "squad_completion", "ablate_mqar", "ablate_phonebook"} <= set(rc)
    assert rc["swde"]["contains"]["n"] == 4 and 0 <= rc["squad_completion"]["contains"]["value"] <= 1
    # the needle suite: one task per length, per-sample records and the heatmap beside the result
    niah = read_json(eval_dir / "niah.fixtures.json")
    assert set(rows_by_task(niah)) == {"ablate_niah_64", "ablate_niah_128"}
    assert niah["settings"]["niah"]["lengths"] == [64, 128] and niah["settings"]["niah"]["per_cell"] == 2
    samples = [json.loads(line) for line in (eval_dir / niah["samples"]).read_text().splitlines()]
    assert len(samples) == 2 * 3 * 2
    assert {(s["length"], s["depth"]) for s in samples} == {(L, d) for L in (64, 128) for d in (0.0, 0.5, 1.0)}
    assert all(s["length_tokens"] <= s["length"] and s["acc"] in (0.0, 1.0) for s in samples)
    heat = (eval_dir / "niah.fixtures.heatmap.csv").read_text().splitlines()
    assert heat[0] == "length,depth,accuracy,n" and len(heat) == 1 + 6


def test_a_model_trained_on_the_recall_questions_beats_chance_where_the_untrained_one_does_not(untrained, trained):
    # the trained model learned these questions' answers (see eval_support.train_recall_run for why)
    args = ["--suite", "recall", "--tasks", "ablate_mqar", "--limit", "48", "--metadata", json.dumps(MQAR_SIZE)]
    scores = {}
    for name, run in (("untrained", untrained), ("trained", trained)):
        result = run_eval(run, *args)
        assert result.exit_code == 0, result.output
        record = read_json(RunDir(run).eval_path("recall"))
        assert record["fixtures"] is False and record["limit"] == 48
        (row,) = [r for r in record["results"] if r["task"] == "ablate_mqar" and r["metric"] == "acc"]
        assert row["n"] == 48
        scores[name] = row["value"]
    assert scores["untrained"] <= 0.45, scores  # chance is 0.25
    assert scores["trained"] >= 0.6, scores


def test_an_unseen_task_yaml_through_include_path(untrained, tmp_path):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    rows = [
        {"q": "The sky on a clear day is", "options": [" blue", " green", " loud"], "gold": 0},
        {"q": "Snow is usually", "options": [" black", " white", " sour"], "gold": 1},
        {"q": "Grass is", "options": [" purple", " salty", " green"], "gold": 2},
    ]
    (tasks / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "helpers.py").write_text("def upper_first(dataset):\n    return dataset.map(lambda d: {'q': d['q'][0].upper() + d['q'][1:]})\n")
    (tasks / "colours.yaml").write_text(textwrap.dedent(f"""\
        task: my_colours
        dataset_path: json
        dataset_kwargs:
          data_files: {{test: {tasks / 'colours.jsonl'}}}
        test_split: test
        process_docs: !function helpers.upper_first
        output_type: multiple_choice
        doc_to_text: "{{{{q}}}}"
        doc_to_choice: "{{{{options}}}}"
        doc_to_target: gold
        target_delimiter: ""
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    result = run_eval(untrained, "--tasks", "my_colours", "--include-path", tasks)
    assert result.exit_code == 0, result.output
    record = read_json(RunDir(untrained).eval_path("custom"))
    (row,) = [r for r in record["results"] if r["metric"] == "acc"]
    assert row["task"] == "my_colours" and row["n"] == 3 and 0 <= row["value"] <= 1
    assert record["headline"] == {"my_colours": "acc"}
    assert "my_colours" in result.output


def test_bad_input_is_one_line_and_writes_nothing(untrained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    eval_dir = RunDir(untrained).eval_dir
    before = sorted(p.name for p in eval_dir.glob("*")) if eval_dir.exists() else []
    cases = [
        (["--suite", "commonsense", "--tasks", "piqa"], "task piqa: dataset baber/piqa is not available offline"),
        (["--suite", "recal"], "unknown suite 'recal'"),
        (["--tasks", "no_such_task"], "unknown task 'no_such_task'"),
        (["--include-path", tmp_path / "missing"], "--include-path"),
        (["--metadata", "{not json"], "--metadata"),
    ]
    for args, expected in cases:
        result = run_eval(untrained, *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and expected in result.stderr, (args, result.stderr)
    result = run_eval(tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such run directory" in result.stderr
    after = sorted(p.name for p in eval_dir.glob("*")) if eval_dir.exists() else []
    assert after == before


def test_gpu_needle_module_evaluates_an_existing_run(untrained, tmp_path):
    from ablate.evals import device_niah

    out = tmp_path / "out"
    assert device_niah.main(["--run-dir", str(untrained), "--out", str(out), "--lengths", "64,96", "--depths", "0,1", "--per-cell", "1"]) == 0
    heat = (out / "niah_heatmap.csv").read_text().splitlines()
    assert heat[0] == "length,depth,accuracy,n" and len(heat) == 1 + 4
    summary = read_json(out / "summary.json")
    assert set(summary["per_length"]) == {"64", "96"} and not summary["errors"]
    assert len((out / "niah_samples.jsonl").read_text().splitlines()) == 4
