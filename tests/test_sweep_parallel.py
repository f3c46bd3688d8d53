"""``ablate sweep --jobs N``: variants split over worker processes, each a plain sequential sweep;
one corpus, one report, and the same skip-what-is-done behaviour."""

import pandas as pd
import yaml
from typer.testing import CliRunner

from ablate.cli import app
from ablate.rundir import RunDir
from ablate.sweep.parallel import TIME_LIMIT_EXIT, combined_exit, split_variants, worker_command
from ablate.sweep.spec import load_sweep


def test_split_and_exit_codes():
    assert split_variants(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert split_variants(["a", "b"], 5) == [["a"], ["b"]]  # never an idle worker
    assert combined_exit([0, 0]) == 0
    assert combined_exit([0, TIME_LIMIT_EXIT]) == TIME_LIMIT_EXIT  # rerun to continue
    assert combined_exit([TIME_LIMIT_EXIT, 1]) == 1  # a failure is not hidden by a pause
    assert combined_exit([1, 130]) == 130


def test_workers_get_the_seeds_asked_for():
    sweep = load_sweep("smoke")
    cmd = worker_command(sweep, "runs/x", ["train", "report"], ["table1-06-llama"], time_limit=None, fail_fast=False, seeds="1")
    assert cmd[cmd.index("--seeds") + 1] == "1" and cmd[cmd.index("--stages") + 1] == "train"
    assert "--seeds" not in worker_command(sweep, "runs/x", ["train"], ["table1-06-llama"], time_limit=None, fail_fast=False)


def test_two_workers_train_every_run_and_report_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "sweeps.yaml"
    path.write_text(yaml.safe_dump({"sweeps": {"p": {
        "description": "parallel test", "scale": "tiny", "variants": ["table1-06-llama", "table1-01-mamba"],
        "data": {"max_tokens": 20000}, "train": {"steps": 2, "global_batch": 2, "seq_len": 16, "eval_every": 0},
    }}}))
    root, out = tmp_path / "runs", tmp_path / "report"
    args = ["sweep", "p", "--file", str(path), "--root", str(root), "--stages", "train,report", "--out", str(out), "--jobs", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for run in ("table1-06-llama", "table1-01-mamba"):
        assert RunDir(root / run).info()["status"] == "complete"
    logs = sorted(p.name for p in (root / ".sweep" / "logs").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]
    assert "table1-01-mamba" in (root / ".sweep" / "logs" / "worker-1.log").read_text()
    assert (out / "README.md").exists() and {"table1-01-mamba", "table1-06-llama"} <= set(pd.read_csv(out / "table1.csv").variant)
    again = CliRunner().invoke(app, args)  # everything done: the workers skip, the report is remade
    assert again.exit_code == 0 and again.output.count("skip") >= 2, again.output
