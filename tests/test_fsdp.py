"""FSDP2 on CPU: two gloo processes under torchrun train a tiny variant (with cross-layer KV sharing)
to the per-step losses of one process on the same global batch; their sharded DCP checkpoint then
resumes in a single process (DCP reshards) and continues on the same curve."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from train_support import REPO, losses, subprocess_env, tiny_data, val_losses  # noqa: F401

import torch.distributed as dist

from ablate.train import run_training

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")

VARIANT = "table1-10-llama-kv-compression"  # attention with SWA + cross-layer KV sharing
SETTINGS = dict(seq_len=32, global_batch=4, micro_batch=1, ckpt_every=2, eval_every=2, val_windows=3, keep_checkpoints=3)
STEPS = 4


def test_fsdp_two_processes_match_one(tmp_path, tiny_data):
    single = run_training(VARIANT, "tiny", out=tmp_path / "single", data=tiny_data, steps=STEPS, settings=SETTINGS, quiet=True)

    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ablate.train", VARIANT,
           "--data", str(tiny_data), "--out", str(sharded), "--steps", str(STEPS), "--seq-len", "32", "--batch", "4", "--micro-batch", "1",
           "--ckpt-every", "2", "--eval-every", "2", "--keep", "3", "--set", "val_windows=3", "-q"]
    r = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((sharded / "run.json").read_text())
    assert info["world_size"] == 2 and info["fsdp"] is True and info["config_hash"] == single.config_hash
    assert len(list((sharded / "checkpoints" / "step-00000002").glob("*.distcp"))) == 2  # one shard file per rank

    want, got = losses(single.run_dir), losses(sharded)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])
    for step, v in val_losses(single.run_dir).items():
        assert abs(val_losses(sharded)[step] - v) < 1e-5

    # the 2-rank checkpoint of step 2 resumes in one process and continues on the same curve
    for p in (sharded / "checkpoints").iterdir():
        if p.name != "step-00000002":
            shutil.rmtree(p)
    info.update(status="running")
    (sharded / "run.json").write_text(json.dumps(info))
    resumed = run_training(VARIANT, "tiny", out=sharded, data=tiny_data, steps=STEPS, settings=SETTINGS, resume=True, quiet=True)
    assert resumed.status == "complete"
    again = losses(sharded)
    for step in (3, 4):
        assert abs(again[step] - want[step]) < 1e-5, (step, again[step], want[step])
