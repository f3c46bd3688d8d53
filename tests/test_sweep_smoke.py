"""End to end on CPU with the real stages: a two-variant sweep is killed (SIGKILL) halfway, then rerun:
the rerun finishes only what was missing (the finished run is untouched, the killed training resumes
from its checkpoint), and the report's tables and plots hold the runs' numbers."""

import json
import os
import subprocess
import sys

import matplotlib.collections
import pandas as pd
import pytest
import yaml

from ablate.report import plots
from ablate.report.load import load_runs
from ablate.rundir import read_json

CLI = "import sys; from ablate.cli import app; sys.argv[0] = 'ablate'; app()"


def _sweep(tmp_path):
    path = tmp_path / "sweeps.yaml"
    train = {"steps": 4, "global_batch": 4, "seq_len": 32, "lr": 3.0e-3, "warmup_steps": 1, "eval_every": 2, "ckpt_every": 2}
    path.write_text(yaml.safe_dump({"sweeps": {"mini": {
        "description": "two families, killed halfway",
        "scale": "tiny",
        # the first run stops before step 4, so only the second run's step-4 checkpoint save is killed
        "variants": [{"variant": "table1-06-llama", "train": {"steps": 3}}, "table3-samba"],
        "data": {"max_tokens": 20000, "val_fraction": 0.05},
        "train": train,
        "eval": {"suites": ["recall"], "limit": 6, "tasks": {"recall": ["ablate_mqar", "ablate_phonebook"]}},
        "bench": {"prompt_len": 16, "gen_tokens": 4, "batch": 1, "dtype": "fp32", "device": "cpu"},
    }}}))
    return path


def _run(args, tmp_path, **env):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "ABLATE_DATA_CACHE": str(tmp_path / "data-cache"), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=600)


def test_killed_sweep_resumes_and_reports(tmp_path):
    sweeps = _sweep(tmp_path)
    root, out = tmp_path / "runs", tmp_path / "report"
    args = ["sweep", "mini", "--file", str(sweeps), "--root", str(root), "--out", str(out), "--quiet"]

    # 1. killed in the middle of table3-samba's step-4 checkpoint (the process gets SIGKILL)
    first = _run(args, tmp_path, ABLATE_FAULT="crash-in-save:4")
    assert first.returncode == -9, first.stdout[-2000:] + first.stderr[-2000:]
    llama, samba = root / "table1-06-llama", root / "table3-samba"
    assert read_json(llama / "run.json")["status"] == "complete"
    assert (llama / "eval" / "recall.json").exists() and (llama / "bench.json").exists()
    assert read_json(samba / "run.json")["status"] == "running"  # killed: not even time to say so
    assert not (samba / "model").exists() and not (out / "README.md").exists()
    finished = {p: p.stat().st_mtime_ns for p in llama.rglob("*") if p.is_file()}

    # 2. the plan: only what is missing
    dry = _run(["sweep", "mini", "--file", str(sweeps), "--root", str(root), "--dry-run"], tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = {line.split()[1]: line for line in dry.stdout.splitlines() if line.startswith("│ table")}
    assert lines["table1-06-llama"].count("skip") == 3
    assert "resume" in lines["table3-samba"] and "tok/s (table3-samba on CPU" in lines["table3-samba"]

    # 3. rerun: the finished run is untouched, the killed training resumes, the report is written
    second = _run(args, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in llama.rglob("*") if p.is_file()} == finished
    info = read_json(samba / "run.json")
    assert info["status"] == "complete" and info["step"] == 4 and len(info.get("resumed", [])) == 1
    steps = [m["step"] for m in map(json.loads, (samba / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert steps[-1] == 4 and steps.count(3) == 1  # resumed after the step-2 checkpoint: step 3 redone once, not from scratch
    ledger = read_json(root / ".sweep" / "table3-samba.json")
    assert {ledger[k]["status"] for k in ("train", "eval:recall", "bench")} == {"complete"}
    assert "table3-samba" in second.stdout and "resume" in second.stdout

    # 4. the report: tables with the runs' numbers, plots with their series
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.row.tolist() == [6] and t1.recall_basis.tolist() == ["synthetic (phonebook, MQAR)"]
    results = pd.read_csv(out / "results.csv")
    recall = results[(results.suite == "recall") & (results.metric == "acc")]
    assert sorted(recall.task.unique()) == ["ablate_mqar", "ablate_phonebook"] and set(recall.run) == {"table1-06-llama", "table3-samba"}
    assert recall.value.between(0, 1).all()
    ours = results[(results.run == "table1-06-llama") & (results.task.isin(["ablate_mqar", "ablate_phonebook"]))].value.mean() * 100
    assert t1.recall_ours[0] == pytest.approx(ours, rel=1e-6)
    bench = read_json(llama / "bench.json")
    assert t1.throughput_ours[0] == pytest.approx(bench["decode_tokens_per_s"]) and bench["protocol"]["prompt_len"] == 16
    t3 = pd.read_csv(out / "table3.csv")
    assert t3.source.tolist()[:1] == ["ours"] and t3[t3.source == "paper"].piqa.tolist() == [73.23]
    manifest = read_json(out / "report.json")
    assert {"loss_curves.png", "accuracy_vs_cache_recall.png", "accuracy_vs_throughput_recall.png", "README.md"} <= set(manifest["files"])
    readme = (out / "README.md").read_text()
    assert "CPU" in readme and "ablate sweep mini" in readme and "scale: tiny" in readme

    runs = load_runs(root)
    loss = plots.loss_curves(runs, "tiny")
    lines = {line.get_label(): line for line in loss.axes[0].get_lines()}
    assert set(lines) == {"table1-06-llama", "table3-samba"} and list(lines["table3-samba"].get_xdata())[-1] == 4 * 4 * 32
    fig = plots.tradeoff_figure(plots.tradeoff_points(runs), "throughput", "recall", "tiny", "CPU")
    xs = {c.get_label(): c.get_offsets()[0][0] for c in fig.axes[0].collections if isinstance(c, matplotlib.collections.PathCollection)}
    assert xs["table1-06-llama"] == pytest.approx(bench["decode_tokens_per_s"])
