"""Exact resume after crashes, with real processes: a run SIGKILLed mid-step and a run killed in the
middle of writing a checkpoint both continue with ``--resume`` to exactly the losses of an
uninterrupted run (CPU fp32: bitwise equal)."""

from __future__ import annotations

import signal
import subprocess
import time

from train_support import REPO, TINY_TRAIN, losses, run_train, subprocess_env, tiny_data, train_cmd, val_losses  # noqa: F401

from ablate.train.checkpoint import latest_checkpoint, list_checkpoints

STEPS = 10


def _args(data, out):
    # a fast attention variant with document masking (the hybrid's resume is covered in-process by
    # test_train's NaN test; subprocesses here are about real kills)
    return ["table3-llama3", "--data", data, "--out", out, "--steps", STEPS, "--ckpt-every", 2, "--eval-every", 4,
            "--set", "val_windows=2", "--override", "document_masking=true", "--seq-len", "32", "--batch", "4", "-q"]


def test_resume_after_sigkill_and_crash_while_saving(tmp_path, tiny_data):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    r = run_train(*_args(tiny_data, ref))
    assert r.returncode == 0, r.stderr[-2000:]

    # 1. killed (SIGKILL) in the middle of writing the step-4 checkpoint: the half-written folder is
    # ignored, step 2 is still the latest complete checkpoint, and it loads
    r = run_train(*_args(tiny_data, crashed), env=subprocess_env(ABLATE_FAULT="crash-in-save:4"))
    assert r.returncode == -signal.SIGKILL
    ckpts = crashed / "checkpoints"
    assert (ckpts / ".tmp-step-00000004").is_dir()
    assert [s for s, _ in list_checkpoints(ckpts)] == [2] and latest_checkpoint(ckpts).name == "step-00000002"

    # 2. resumed, then SIGKILLed mid-step as soon as the step-6 checkpoint exists
    p = subprocess.Popen(train_cmd(*_args(tiny_data, crashed), "--resume"), env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ckpts / "step-00000006").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (ckpts / ".tmp-step-00000004").exists()  # cleaned on resume

    # 3. resumed to the end
    r = run_train(*_args(tiny_data, crashed), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]

    want, got = losses(ref), losses(crashed)
    assert sorted(got) == list(range(1, STEPS + 1))  # each step logged once despite the crashes
    assert got == want  # bitwise: same batches, RNG, optimizer and scheduler state
    assert val_losses(crashed) == val_losses(ref)
    import json

    info = json.loads((crashed / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 2
