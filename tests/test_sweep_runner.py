"""The sweep runner's skip / resume / rerun logic, failure recording and Ctrl-C handling, with fake
stage adapters that write results to the run-directory contract (fast: no training)."""

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from ablate.cli import app
from ablate.rundir import RunDir, read_json, write_json_atomic
from ablate.sweep import plan as plan_mod
from ablate.sweep.runner import SweepRunner
from ablate.sweep.spec import load_sweep


def sweep_file(tmp_path, steps=4, limit=8, seeds=(0,), variants=("table1-06-llama", "table3-samba")) -> Path:
    path = tmp_path / "sweeps.yaml"
    path.write_text(yaml.safe_dump({"sweeps": {"t": {
        "description": "test", "scale": "tiny", "variants": list(variants), "seeds": list(seeds),
        "train": {"steps": steps, "global_batch": 2, "seq_len": 16},
        "eval": {"suites": ["recall"], "limit": limit},
        "bench": {"prompt_len": 8, "gen_tokens": 2, "batch": 1, "dtype": "fp32", "device": "cpu"},
    }}}))
    return path


class FakeStages:
    """Adapters writing contract-shaped results; ``fail_on`` / ``interrupt_on`` = (run name, stage)."""

    StageError = RuntimeError

    def __init__(self, fail_on=None, interrupt_on=None):
        self.calls: list[tuple] = []
        self.fail_on, self.interrupt_on = fail_on, interrupt_on

    def _check(self, run, stage):
        if (run, stage) == self.interrupt_on:
            raise KeyboardInterrupt
        if (run, stage) == self.fail_on:
            raise RuntimeError(f"boom in {stage}\nsecond line")

    def prepare_data(self, sweep):
        self.calls.append(("data",))
        return Path("/nonexistent-data")

    def train(self, sweep, job, run_dir, data_dir, resume, quiet=False):
        self.calls.append(("train", job.run_name, resume))
        rd = RunDir(run_dir)
        rd.path.mkdir(parents=True, exist_ok=True)
        h = f"trainer-{job.train['steps']}"
        write_json_atomic(rd.run_json, {"variant": job.variant, "scale": sweep.scale, "status": "running", "config_hash": h, "train": {"seed": job.seed}})
        rd.append_metrics({"step": 1, "tokens": 32, "loss": 5.0, "tokens_per_s": 1000.0})
        self._check(job.run_name, "train")
        rd.model_dir.mkdir(exist_ok=True)
        (rd.model_dir / "config.json").write_text("{}")
        rd.update_info(status="complete")
        return h

    def evaluate(self, job, run_dir, suite, progress=False):
        self.calls.append(("eval", job.run_name, suite))
        self._check(job.run_name, "eval")
        h = RunDir(run_dir).info()["config_hash"]
        write_json_atomic(RunDir(run_dir).eval_path(suite), {"suite": suite, "limit": job.eval["limit"], "config_hash": h,
                                                             "results": [{"task": "ablate_mqar", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 8}]})
        return h

    def bench(self, job, run_dir, say=None):
        self.calls.append(("bench", job.run_name))
        self._check(job.run_name, "bench")
        h = RunDir(run_dir).info()["config_hash"]
        write_json_atomic(RunDir(run_dir).bench_path, {"variant": job.variant, "decode_tokens_per_s": 100.0, "config_hash": h, "protocol": job.bench})
        return h


def run(tmp_path, path, stages=("train", "eval", "bench"), **kw):
    sweep = load_sweep("t", path)
    fake = kw.pop("fake", None) or FakeStages()
    runner = SweepRunner(sweep, tmp_path / "runs", list(stages), console=Console(file=open("/dev/null", "w")), adapters=fake, **kw)
    return runner, fake, runner.run()


def stage_calls(fake):
    return [c for c in fake.calls if c[0] != "data"]


def test_second_run_skips_everything(tmp_path):
    path = sweep_file(tmp_path)
    _, fake, res = run(tmp_path, path)
    assert stage_calls(fake) == [("train", "table1-06-llama", False), ("eval", "table1-06-llama", "recall"), ("bench", "table1-06-llama"),
                                 ("train", "table3-samba", False), ("eval", "table3-samba", "recall"), ("bench", "table3-samba")]
    assert {o.status for o in res.outcomes} == {"ok"}
    ledger = read_json(tmp_path / "runs" / ".sweep" / "table1-06-llama.json")
    assert ledger["train"]["status"] == "complete" and ledger["train"]["result_hash"] == "trainer-4"
    assert ledger["eval:recall"]["spec"]["limit"] == 8
    # the run directory holds only what the stages wrote
    assert sorted(p.name for p in (tmp_path / "runs" / "table1-06-llama").iterdir()) == ["bench.json", "eval", "metrics.jsonl", "model", "run.json"]

    _, fake2, res2 = run(tmp_path, path)
    assert stage_calls(fake2) == [] and ("data",) not in fake2.calls
    assert {o.status for o in res2.outcomes} == {"skipped"}


def test_changed_eval_config_reruns_only_eval(tmp_path):
    run(tmp_path, sweep_file(tmp_path))
    _, fake, _ = run(tmp_path, sweep_file(tmp_path, limit=16))
    assert stage_calls(fake) == [("eval", "table1-06-llama", "recall"), ("eval", "table3-samba", "recall")]
    assert read_json(tmp_path / "runs" / "table3-samba" / "eval" / "recall.json")["limit"] == 16


def test_changed_train_config_retrains_and_keeps_the_old_run(tmp_path):
    run(tmp_path, sweep_file(tmp_path))
    sweep = load_sweep("t", sweep_file(tmp_path, steps=6))
    plans = plan_mod.plan_sweep(sweep, tmp_path / "runs", ["train", "eval", "bench"])
    assert [(i.key, i.action) for i in plans[0].items] == [("train", "rerun"), ("eval:recall", "run"), ("bench", "run")]
    _, fake, _ = run(tmp_path, sweep_file(tmp_path, steps=6))
    assert [c[0] for c in stage_calls(fake)] == ["train", "eval", "bench"] * 2
    assert read_json(tmp_path / "runs" / "table1-06-llama" / "run.json")["config_hash"] == "trainer-6"
    old = list((tmp_path / "runs" / ".superseded").iterdir())
    assert len(old) == 2 and all(read_json(p / "run.json")["config_hash"] == "trainer-4" for p in old)


def test_ctrl_c_then_rerun_finishes_only_what_was_missing(tmp_path):
    path = sweep_file(tmp_path)
    _, _, res = run(tmp_path, path, fake=FakeStages(interrupt_on=("table3-samba", "train")))
    assert res.interrupted
    assert [(o.run, o.stage, o.status) for o in res.outcomes][-1] == ("table3-samba", "train", "interrupted")
    first = tmp_path / "runs" / "table1-06-llama"
    mtimes = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    ledger = read_json(tmp_path / "runs" / ".sweep" / "table3-samba.json")
    assert ledger["train"]["status"] == "interrupted"

    sweep = load_sweep("t", path)
    plans = {jp.job.run_name: jp for jp in plan_mod.plan_sweep(sweep, tmp_path / "runs", ["train", "eval", "bench"])}
    assert [i.action for i in plans["table1-06-llama"].items] == ["skip"] * 3
    assert plans["table3-samba"].items[0].action == "resume"

    _, fake, res2 = run(tmp_path, path)
    assert stage_calls(fake) == [("train", "table3-samba", True), ("eval", "table3-samba", "recall"), ("bench", "table3-samba")]
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == mtimes  # finished results untouched
    assert not res2.failed


def test_failure_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = sweep_file(tmp_path)
    _, fake, res = run(tmp_path, path, fake=FakeStages(fail_on=("table1-06-llama", "train")))
    by = {(o.run, o.stage): o for o in res.outcomes}
    assert by[("table1-06-llama", "train")].status == "failed"
    assert by[("table1-06-llama", "train")].message == "RuntimeError: boom in train"  # one line
    assert by[("table1-06-llama", "eval:recall")].status == "not run"
    assert by[("table3-samba", "bench")].status == "ok"  # the next run went ahead
    info = read_json(tmp_path / "runs" / "table1-06-llama" / "run.json")
    assert info["status"] == "failed" and "boom" in info["error"]
    assert read_json(tmp_path / "runs" / ".sweep" / "table1-06-llama.json")["train"]["error"] == "RuntimeError: boom in train"

    with pytest.raises(RuntimeError):
        run(tmp_path, path, fake=FakeStages(fail_on=("table1-06-llama", "train")), fail_fast=True)


def test_eval_without_a_trained_model_is_blocked(tmp_path):
    _, fake, res = run(tmp_path, sweep_file(tmp_path), stages=("eval",))
    assert stage_calls(fake) == []
    assert {o.status for o in res.outcomes} == {"not run"}
    assert "needs a trained model" in res.outcomes[0].message


def test_one_suite_of_the_eval_stage(tmp_path):
    """``--stages train,eval:SUITE`` runs that suite only (e.g. on a machine without the hub's data);
    the others stay to do, and a later plain run does just them."""
    path = tmp_path / "sweeps.yaml"
    path.write_text(yaml.safe_dump({"sweeps": {"t": {"scale": "tiny", "variants": ["table1-06-llama"], "train": {"steps": 2, "global_batch": 2, "seq_len": 16},
                                                     "eval": {"suites": ["recall", "commonsense"], "limit": 4}}}}))
    _, fake, _ = run(tmp_path, path, stages=("train", "eval:commonsense"))
    assert stage_calls(fake) == [("train", "table1-06-llama", False), ("eval", "table1-06-llama", "commonsense")]
    _, fake, _ = run(tmp_path, path, stages=("train", "eval"))
    assert stage_calls(fake) == [("eval", "table1-06-llama", "recall")]


def test_dry_run_plan_and_estimate(tmp_path):
    path = sweep_file(tmp_path, seeds=(0, 1), variants=("table1-06-llama",))
    sweep = load_sweep("t", path)
    run(tmp_path, path, only=["table1-06-llama"])  # both seeds trained; their metrics say 1000 tok/s
    (tmp_path / "changed").mkdir()
    changed = sweep_file(tmp_path / "changed", steps=8, seeds=(0, 1), variants=("table1-06-llama",))
    plans = plan_mod.plan_sweep(load_sweep("t", changed), tmp_path / "runs", ["train"])
    train = plans[0].items[0]
    assert train.action == "rerun" and train.tokens == 8 * 2 * 16
    assert train.est_seconds == pytest.approx(8 * 2 * 16 / 1000.0)
    assert "1,000 tok/s" in train.rate_source

    res = CliRunner().invoke(app, ["sweep", "t", "--file", str(path), "--root", str(tmp_path / "fresh"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "table1-06-llama-s1" in res.output and "256 tokens to train" in res.output.replace("\n", " ") and "unknown" in res.output
    assert not (tmp_path / "fresh").exists()  # a dry run writes nothing
    assert sweep.jobs[1].run_name == "table1-06-llama-s1"

    # one seed of the sweep alone (a lease each): the same runs, under the same names
    one = CliRunner().invoke(app, ["sweep", "t", "--file", str(path), "--root", str(tmp_path / "fresh"), "--dry-run", "--seeds", "1"])
    assert one.exit_code == 0, one.output
    assert "table1-06-llama-s1" in one.output and "128 tokens to train" in one.output.replace("\n", " ")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sweep", "nope"], "unknown sweep 'nope'"),
        (["sweep", "t", "--stages", "train,bogus"], "unknown stage 'bogus'"),
        (["sweep", "t", "--only", "table1-01-mamba"], "not in sweep 't'"),
        (["sweep", "t", "--only", "no-such-variant"], "unknown variant"),
        (["sweep", "t", "--stages", "train,eval:niah"], "evaluates no suite 'niah'"),
        (["sweep", "t", "--seeds", "3"], "has seeds 0"),
        (["sweep", "t", "--seeds", "one"], "comma-separated integers"),
        (["report", "/no/such/root"], "no such run root"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, needle):
    if args[0] == "sweep":
        args = args[:2] + ["--file", str(sweep_file(tmp_path))] + args[2:]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_ledger_lives_outside_the_run_directory(tmp_path):
    rd = RunDir(tmp_path / "runs" / "x")
    assert plan_mod.ledger_path(rd) == tmp_path / "runs" / ".sweep" / "x.json"
    assert json.loads(json.dumps(plan_mod.read_ledger(rd))) == {}


def test_rate_from_a_sibling_sweep_root(tmp_path):
    path = sweep_file(tmp_path, variants=("table1-06-llama",))
    run(tmp_path, path)  # tmp_path/runs holds a measured run and a .sweep ledger
    rate = plan_mod.measured_rate(tmp_path / "other", "table1-06-llama", "tiny")
    assert rate is not None and rate[0] == 1000.0 and rate[1].startswith("runs/table1-06-llama on ")
    assert plan_mod.measured_rate(tmp_path / "other", "table3-samba", "tiny") is None


def test_needle_grid_changes_only_the_niah_hash(tmp_path):
    base = {"suites": ["recall", "niah"], "limit": 4, "options": {"niah": {"lengths": [64]}}}
    sweep = load_sweep("t", sweep_file(tmp_path))
    job = sweep.jobs[0]
    other = type(job)(job.variant, job.seed, job.run_name, job.train, {**base, "options": {"niah": {"lengths": [128]}}}, job.bench)
    job = type(job)(job.variant, job.seed, job.run_name, job.train, base, job.bench)
    assert plan_mod.eval_spec("h", "recall", job) == plan_mod.eval_spec("h", "recall", other)
    assert plan_mod.eval_spec("h", "niah", job) != plan_mod.eval_spec("h", "niah", other)


def test_new_synthetic_text_retrains(tmp_path, monkeypatch):
    """The sources name the synthetic generators, not their text: a new text version retrains the
    runs that read synthetic documents (and leaves a corpus without them alone)."""
    from ablate.data import synthetic

    run(tmp_path, sweep_file(tmp_path))
    monkeypatch.setattr(synthetic, "TEXT_VERSION", synthetic.TEXT_VERSION + 1)
    plans = plan_mod.plan_sweep(load_sweep("t", sweep_file(tmp_path)), tmp_path / "runs", ["train"])
    assert [p.items[0].action for p in plans] == ["rerun", "rerun"]
    text_only = load_sweep("t", sweep_file(tmp_path))
    text_only.data = {**text_only.data, "sources": "python-stdlib"}
    spec = plan_mod.train_spec(text_only, text_only.jobs[0])
    assert "synthetic_text" not in spec


def test_leftover_files_without_run_json_are_moved_aside(tmp_path):
    stray = tmp_path / "runs" / "table1-06-llama"
    stray.mkdir(parents=True)
    (stray / "partial.bin").write_text("x")  # e.g. a crash before the trainer wrote run.json
    _, fake, res = run(tmp_path, sweep_file(tmp_path, variants=("table1-06-llama",)))
    assert not res.failed and stage_calls(fake)[0] == ("train", "table1-06-llama", False)
    kept = list((tmp_path / "runs" / ".superseded").iterdir())
    assert len(kept) == 1 and (kept[0] / "partial.bin").read_text() == "x"


class WrappedInterrupt(BaseException):
    """What torch's distributed checkpoint turns a Ctrl-C into (CheckpointException)."""


def test_a_wrapped_ctrl_c_stops_the_sweep_as_interrupted(tmp_path):
    class Stages(FakeStages):
        def train(self, sweep, job, run_dir, data_dir, resume, quiet=False):
            if job.run_name == "table3-samba":
                RunDir(run_dir).path.mkdir(parents=True, exist_ok=True)
                write_json_atomic(RunDir(run_dir).run_json, {"variant": job.variant, "scale": "tiny", "status": "running", "config_hash": "x"})
                raise WrappedInterrupt("CheckpointException ranks: {0}")
            return super().train(sweep, job, run_dir, data_dir, resume, quiet)

    _, _, res = run(tmp_path, sweep_file(tmp_path), fake=Stages())
    assert res.interrupted and res.outcomes[-1].status == "interrupted"
    assert read_json(tmp_path / "runs" / ".sweep" / "table3-samba.json")["train"]["status"] == "interrupted"
    assert read_json(tmp_path / "runs" / "table3-samba" / "run.json")["status"] == "failed"


def test_time_limit_pauses_training_and_a_rerun_resumes(tmp_path):
    from ablate.sweep.stages import StagePaused

    class Stages(FakeStages):
        def train(self, sweep, job, run_dir, data_dir, resume, quiet=False, stop_after_s=None):
            self.calls.append(("limit", job.run_name, stop_after_s))
            if job.run_name == "table3-samba" and stop_after_s is not None:
                RunDir(run_dir).path.mkdir(parents=True, exist_ok=True)
                write_json_atomic(RunDir(run_dir).run_json, {"variant": job.variant, "scale": "tiny", "status": "paused", "config_hash": f"trainer-{job.train['steps']}", "step": 2})
                raise StagePaused("paused at step 2 (time limit)")
            return super().train(sweep, job, run_dir, data_dir, resume, quiet)

    path = sweep_file(tmp_path)
    _, fake, res = run(tmp_path, path, fake=Stages(), time_limit=3600)
    assert res.paused and not res.interrupted and not res.failed
    assert [(o.run, o.stage, o.status) for o in res.outcomes][-1] == ("table3-samba", "train", "paused")
    limits = [c[2] for c in fake.calls if c[0] == "limit"]
    assert len(limits) == 2 and all(0 < x <= 3600 for x in limits)  # what is left of the limit
    assert ("eval", "table3-samba", "recall") not in fake.calls  # nothing after the pause
    assert read_json(tmp_path / "runs" / ".sweep" / "table3-samba.json")["train"]["status"] == "paused"
    plans = {jp.job.run_name: jp for jp in plan_mod.plan_sweep(load_sweep("t", path), tmp_path / "runs", ["train", "eval", "bench"])}
    assert plans["table3-samba"].items[0].action == "resume" and "paused" in plans["table3-samba"].items[0].reason

    _, fake, res = run(tmp_path, path, fake=Stages(), time_limit=0)  # no time left: nothing starts
    assert res.paused and stage_calls(fake) == []
    _, fake, res = run(tmp_path, path, fake=Stages())
    assert not res.paused and ("eval", "table3-samba", "recall") in fake.calls
    assert [c for c in fake.calls if c[0] == "limit"] == [("limit", "table3-samba", None)]


def test_time_limit_exit_code_says_rerun(tmp_path):
    # no time at all: nothing starts (no training, no data preparation)
    result = CliRunner().invoke(app, ["sweep", "t", "--file", str(sweep_file(tmp_path)), "--root", str(tmp_path / "runs"), "--time-limit", "0"])
    assert result.exit_code == 75, result.output
    assert "time limit reached" in result.output and "rerun `ablate sweep t`" in result.output
