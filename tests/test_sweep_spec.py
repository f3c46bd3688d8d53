"""sweeps.yaml: the named sweeps the issue asks for, and one-line errors for bad sweep files."""

from pathlib import Path

import pytest
import yaml

from ablate.registry import resolve
from ablate.sweep.spec import STAGES, SweepError, load_sweep, parse_stages, run_name, sweep_names

REPO_SWEEPS = Path(__file__).resolve().parents[1] / "sweeps.yaml"


def test_repository_sweeps():
    assert set(sweep_names(REPO_SWEEPS)) >= {"smoke", "table1", "table3", "niah"}

    smoke = load_sweep("smoke", REPO_SWEEPS)
    assert smoke.scale == "tiny"
    families = {resolve(v, "tiny").family for v in smoke.variants}
    assert 3 <= len(smoke.variants) <= 4 and len(families) >= 3  # spans the families
    assert smoke.tokens_per_run(smoke.jobs[0]) <= 100_000  # CPU-sized
    assert smoke.bench["device"] == "cpu"

    t1 = load_sweep("table1", REPO_SWEEPS)
    assert [resolve(v, "proxy").paper["row"] for v in t1.variants] == list(range(1, 14))  # the paper's order
    assert t1.scale == "proxy"

    t3 = load_sweep("table3", REPO_SWEEPS)
    assert {resolve(v, "proxy").paper.get("table") for v in t3.variants} == {3}
    assert len(t3.variants) == 5
    assert all(sum(j.variant == v for j in t3.jobs) >= 2 for v in t3.variants)  # >= 2 seeds each
    assert {j.run_name for j in t3.jobs} >= {"table3-hymba", "table3-hymba-s1"}

    for sweep in (t1, t3):  # the locally generated recall tasks run even where the hub is unreachable
        assert sweep.eval["suites"][0] == "recall-synthetic" and "ablate_mqar" in sweep.eval["tasks"]["recall-synthetic"]

    niah = load_sweep("niah", REPO_SWEEPS)
    assert set(niah.variants) == {"table3-hymba", "table3-mamba2", "table3-llama3"}
    assert niah.eval["suites"] == ["niah"]
    for job in niah.jobs:  # the trainer needs seq_len + meta tokens within the positions
        c = resolve(job.variant, "proxy").config
        assert job.train["seq_len"] + c.num_meta_tokens <= c.max_position_embeddings


def test_run_names_keep_seed_zero_bare():
    assert run_name("table3-hymba", 0) == "table3-hymba"
    assert run_name("table3-hymba", 2) == "table3-hymba-s2"


def _write(tmp_path, sweeps: dict, defaults: dict | None = None) -> Path:
    path = tmp_path / "sweeps.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "sweeps": sweeps}))
    return path


BASE = {"scale": "tiny", "variants": ["table1-06-llama"], "train": {"steps": 2, "global_batch": 2, "seq_len": 16}}


def test_defaults_and_overrides_merge(tmp_path):
    path = _write(tmp_path, {"s": {**BASE, "variants": ["table1-06", {"variant": "table3-samba", "seeds": [0, 1], "train": {"steps": 5}}]}},
                  defaults={"seeds": [0], "train": {"lr": 1e-3}, "eval": {"suites": "recall,niah"}})
    s = load_sweep("s", path)
    assert [j.run_name for j in s.jobs] == ["table1-06-llama", "table3-samba", "table3-samba-s1"]  # prefix resolved to the full name
    assert s.jobs[0].train == {"steps": 2, "global_batch": 2, "seq_len": 16, "lr": 1e-3}
    assert s.jobs[1].train["steps"] == 5 and s.jobs[1].train["lr"] == 1e-3
    assert s.jobs[0].eval["suites"] == ["recall", "niah"]
    assert s.tokens_per_run(s.jobs[1]) == 5 * 2 * 16


@pytest.mark.parametrize(
    "sweep, needle",
    [
        ({**BASE, "variants": ["table1-06-llama", "no-such-variant"]}, "variants[1]"),
        ({**BASE, "scale": "huge"}, "'scale'"),
        ({**BASE, "train": {"steps": 2, "seq_len": 16}}, "train.global_batch"),
        ({**BASE, "train": {"steps": 0, "global_batch": 2, "seq_len": 16}}, "train.steps"),
        ({**BASE, "seeds": [0, 0]}, "'seeds'"),
        ({**BASE, "varients": []}, "did you mean 'variants'"),
        ({**BASE, "bench": {"prompt_len": 8}}, "bench.gen_tokens"),
        ({**BASE, "variants": ["table1-06-llama", "table1-06-llama"]}, "listed twice"),
        ({**BASE, "eval": {"suites": ["recall"], "tasks": {"niah": ["ablate_niah"]}}}, "eval.tasks.niah"),
        ({**BASE, "eval": {"suites": ["recall"], "tasks": {"recall": []}}}, "eval.tasks"),
    ],
)
def test_bad_sweeps_are_one_line_errors(tmp_path, sweep, needle):
    path = _write(tmp_path, {"s": sweep})
    with pytest.raises(SweepError) as e:
        load_sweep("s", path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "sweep 's'" in msg and needle in msg


def test_unknown_sweep_and_missing_file(tmp_path):
    path = _write(tmp_path, {"smoke": BASE})
    with pytest.raises(SweepError, match=r"unknown sweep 'smok'.*did you mean smoke"):
        load_sweep("smok", path)
    with pytest.raises(SweepError, match="no such sweep file"):
        load_sweep("smoke", tmp_path / "missing.yaml")


def test_parse_stages():
    assert parse_stages("report,train") == ["train", "report"]  # pipeline order
    assert parse_stages(None) == list(STAGES)
    with pytest.raises(SweepError, match=r"unknown stage 'evl'.*did you mean 'eval'"):
        parse_stages("train,evl")
    # one suite of the eval stage, in the eval stage's place
    assert parse_stages("report,eval:recall-synthetic,train") == ["train", "eval:recall-synthetic", "report"]
    assert parse_stages("eval,eval:recall") == ["eval"]  # the whole stage covers its suites
    for bad in ("bench:x", "eval:", "train:recall"):
        with pytest.raises(SweepError, match="unknown stage"):
            parse_stages(bad)
