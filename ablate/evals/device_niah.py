"""The GPU needle-in-a-haystack check, in one command (results under --out, a summary printed last)::

    python -m ablate.evals.device_niah --out OUT                      # train a proxy model, then evaluate
    python -m ablate.evals.device_niah --run-dir RUN --out OUT        # evaluate an existing run

1. (without a trained --run-dir) prepares an offline corpus: the default mix (Python stdlib + synthetic
   recall) plus needle-format documents (the ``synthetic:needle`` source, a random stream
   disjoint from the eval documents), so a model trained for minutes has seen the retrieval format;
   the paper's models are pretrained at scale and fine-tuned at 4k instead. Then trains a proxy-scale
   variant through the real trainer (``python -m ablate.train``) for a time budget, at a training
   length shorter than the longest evaluated one (the paper tests beyond its 4k fine-tuning length);
2. evaluates the needle suite through lm-eval (``ablate.evals``), one context length at a time from
   the shortest, until the time budget ends (a length that fails is recorded and the rest go on);
3. writes ``niah_heatmap.csv`` (length, depth, accuracy, n), ``niah_samples.jsonl`` (one record per
   document: length, depth, needle position, answer, acc), ``summary.json`` (training, per-length
   accuracy, timings, provenance) and prints the length x depth grid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablate.evals.results import heatmap, heatmap_csv, write_samples
from ablate.rundir import RunDir, provenance, write_json_atomic, write_text_atomic

# the offline mix with a fifth of needle-format documents (the niah sweep in sweeps.yaml uses the same)
NIAH_SOURCES = "python-stdlib@0.6,synthetic:mqar@0.1,synthetic:phonebook@0.1,synthetic:needle@0.2"


def _log(msg: str) -> None:
    print(f"[device_niah {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def prepare_data(work: Path, vocab: int, max_tokens: int, seed: int = 0) -> Path:
    """The default offline mix plus needle-format documents, tokenized with a BPE of ``vocab``."""
    from ablate.data.prepare import prepare

    out = work / "data"
    prepare(NIAH_SOURCES, f"bpe:{vocab}", out, vocab_size=vocab, max_tokens=max_tokens, val_fraction=0.01, seed=seed, force=True)
    return out


def _train(variant: str, data: Path, run_dir: Path, args: list, timeout: float) -> int:
    cmd = [sys.executable, "-m", "ablate.train", variant, "--data", str(data), "--out", str(run_dir), "-q", *map(str, args)]
    _log(" ".join(cmd[1:]))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=max(30.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        _log(f"training timed out after {timeout:.0f}s")
        return 124
    if p.returncode:
        _log(f"training failed (rc {p.returncode}): {(err or '').strip().splitlines()[-1:]}")
    return p.returncode


def _tokens_per_s(run_dir: Path) -> float | None:
    rows = [r for r in RunDir(run_dir).metrics() if r.get("tokens_per_s")]
    return rows[-1]["tokens_per_s"] if rows else None


def train_model(a, work: Path, deadline: float) -> Path:
    t0 = time.time()
    from ablate.registry import resolve

    vocab = resolve(a.variant, a.scale).config.vocab_size
    data = prepare_data(work, vocab, a.data_tokens)
    _log(f"data prepared in {time.time() - t0:.0f}s")
    # compile off: its warm-up does not fit a few-minute budget reliably (as ablate.train.proxy_run)
    base = ["--scale", a.scale, "--seq-len", a.seq_len, "--batch", a.batch, "--eval-every", 0, "--ckpt-every", 0, "--compile", "off", "--set", "val_windows=8"]
    probe = work / "probe"
    _train(a.variant, data, probe, base + ["--steps", 8, "--warmup", 2], timeout=min(180, deadline - time.time()))
    tps = _tokens_per_s(probe) or 50_000.0
    shutil.rmtree(probe, ignore_errors=True)
    left = deadline - time.time() - a.eval_reserve_s
    train_s = max(20.0, min(a.train_s, left))
    steps = int(max(30, min(5000, train_s * tps / (a.seq_len * a.batch))))
    _log(f"probe: {tps:,.0f} tokens/s -> {steps} steps for {train_s:.0f}s of training")
    run_dir = Path(a.run_dir) if a.run_dir else work / "run"
    rc = _train(a.variant, data, run_dir, base + ["--steps", steps, "--warmup", max(10, steps // 20)], timeout=train_s * 1.5 + 60)
    if rc or not RunDir(run_dir).has_model():
        raise SystemExit(f"training produced no model in {run_dir} (rc {rc})")
    return run_dir


def evaluate(run_dir: Path, out: Path, lengths: list[int], depths: list[float], per_cell: int, deadline: float) -> dict:
    from ablate.evals import NiahGrid, evaluate_model, load

    loaded = load(run_dir)
    per_length, samples, errors = {}, [], {}
    for length in sorted(lengths):
        if time.time() > deadline:
            errors[length] = "skipped: time budget spent"
            _log(f"length {length}: skipped (budget)")
            continue
        t0 = time.time()
        try:
            (res,) = evaluate_model(loaded, "niah", niah_grid=NiahGrid(lengths=[length], depths=depths, per_cell=per_cell), progress=False)
        except Exception as e:  # one length failing (e.g. out of memory) must not lose the others
            errors[length] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _log(f"length {length}: failed: {errors[length]}")
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        samples += res.samples
        acc = [r["value"] for r in res.record["results"] if r["metric"] == "acc"]
        per_length[length] = {"accuracy": acc[0] if acc else None, "seconds": round(time.time() - t0, 1), "settings": res.record["settings"]["tasks"]}
        _log(f"length {length}: accuracy {per_length[length]['accuracy']:.3f} in {per_length[length]['seconds']}s")
    cells = heatmap(samples)
    write_text_atomic(out / "niah_heatmap.csv", heatmap_csv(cells))
    write_samples(out / "niah_samples.jsonl", samples)
    return {"per_length": per_length, "errors": errors, "heatmap": cells, "model_max_length": loaded.max_length}


def grid_text(cells: list[dict]) -> str:
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    acc = {(c["length"], c["depth"]): c["accuracy"] for c in cells}
    lines = ["length \\ depth " + " ".join(f"{d:>6.2f}" for d in depths)]
    for L in lengths:
        lines.append(f"{L:>14} " + " ".join(f"{acc[(L, d)]:>6.2f}" if (L, d) in acc else "     -" for d in depths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--run-dir", help="a trained run to evaluate (trained here first when it has no model)")
    ap.add_argument("--variant", default="table3-hymba", help="variant to train")
    ap.add_argument("--scale", default="proxy", help="scale to train it at (tiny: a CPU smoke run of this module)")
    ap.add_argument("--seq-len", type=int, default=1024, help="training length (evaluation goes beyond it)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-s", type=float, default=110, help="training time budget")
    ap.add_argument("--data-tokens", type=int, default=4_000_000)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--per-cell", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=235, help="wall-clock budget of the whole command")
    ap.add_argument("--eval-reserve-s", type=float, default=75, help="time kept for evaluation after training")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    t_start = time.time()
    deadline = t_start + a.budget_s
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="ablate-niah-"))
    summary: dict = {"provenance": provenance(), "variant": a.variant, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    run_dir = Path(a.run_dir) if a.run_dir else None
    if run_dir is None or not RunDir(run_dir).has_model():
        t0 = time.time()
        run_dir = train_model(a, work, deadline)
        summary["train_seconds"] = round(time.time() - t0, 1)
    info = RunDir(run_dir).info() if RunDir(run_dir).exists() else {}
    metrics = RunDir(run_dir).metrics()
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    summary["run"] = {
        "run_dir": str(run_dir), "variant": info.get("variant"), "scale": info.get("scale"), "config_hash": info.get("config_hash"),
        "steps": max((r.get("step", 0) for r in metrics), default=None), "tokens": max((r.get("tokens", 0) for r in metrics), default=None),
        "val_loss_first": vals[0] if vals else None, "val_loss_last": vals[-1] if vals else None,
        "train_seq_len": (info.get("train") or {}).get("seq_len") if isinstance(info.get("train"), dict) else None,
    }
    for name in ("run.json", "metrics.jsonl"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, a.out / name)
    result = evaluate(run_dir, a.out, _ints(a.lengths), _floats(a.depths), a.per_cell, deadline)
    summary.update(result)
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    write_json_atomic(a.out / "summary.json", summary)
    print(f"\nneedle accuracy, {summary['run'].get('variant')} (trained {summary['run'].get('steps')} steps at seq {summary['run'].get('train_seq_len')}; "
          f"model max length {result['model_max_length']}); rows: context length in tokens, columns: needle depth")
    print(grid_text(result["heatmap"]))
    for length, err in result["errors"].items():
        print(f"length {length}: {err}")
    print(f"files: {a.out}/niah_heatmap.csv, niah_samples.jsonl, summary.json; wall {summary['wall_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
