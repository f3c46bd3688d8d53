"""Fake run directories written to the run-directory contract (ablate/rundir.py), for report tests:
known numbers in, so tests can check the numbers that come out."""

from __future__ import annotations

import json
from pathlib import Path

from ablate.rundir import RunDir, write_json_atomic

PROV = {"date": "2026-11-23T00:00:00+00:00", "git_sha": "abc1234", "device": "CPU (x86_64, 2 cores)", "command": "ablate sweep smoke", "torch": "2.13.0"}

COMMONSENSE_TASKS = [("lambada_openai", "acc"), ("lambada_openai", "perplexity"), ("piqa", "acc"), ("arc_easy", "acc"), ("arc_challenge", "acc_norm"),
                     ("hellaswag", "acc_norm"), ("winogrande", "acc"), ("truthfulqa_mc2", "acc"), ("social_iqa", "acc"), ("wikitext", "word_perplexity")]


def write_run(root: Path, variant: str, seed: int = 0, scale: str = "tiny", *, commonsense: float | None = None, recall: float | None = None,
              swde: float | None = None, throughput: float | None = 1000.0, steps: int = 10, niah: bool = False, status: str = "complete") -> RunDir:
    """One run directory. ``commonsense``: the value of every commonsense accuracy (perplexities 20);
    ``recall``: phonebook and MQAR accuracy; ``swde``: SWDE and SQuAD-C."""
    name = variant if seed == 0 else f"{variant}-s{seed}"
    rd = RunDir(Path(root) / name)
    rd.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rd.run_json, {"variant": variant, "scale": scale, "seed": seed, "status": status, "config_hash": "h-train",
                                    "train": {"steps": steps, "batch_size": 2, "seq_len": 16}, "provenance": PROV})
    (rd.model_dir).mkdir(exist_ok=True)
    (rd.model_dir / "config.json").write_text("{}")
    with open(rd.metrics_path, "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "tokens": step * 32, "loss": 5.0 - 0.1 * step - 0.01 * seed, "lr": 1e-3, "tokens_per_s": 500.0}) + "\n")
            if step % 5 == 0:
                f.write(json.dumps({"step": step, "tokens": step * 32, "val_loss": 5.2 - 0.1 * step}) + "\n")
    if commonsense is not None:
        res = [{"task": t, "metric": f"{m},none", "value": 20.0 if "perplexity" in m else commonsense, "stderr": 0.01, "n": 10} for t, m in COMMONSENSE_TASKS]
        write_json_atomic(rd.eval_path("commonsense"), {"suite": "commonsense", "limit": 10, "results": res, "config_hash": "h-cs", "provenance": PROV})
    res = []
    if recall is not None:
        res += [{"task": t, "metric": "acc", "value": recall, "stderr": 0.05, "n": 24} for t in ("ablate_phonebook", "ablate_mqar")]
    if swde is not None:
        res += [{"task": t, "metric": "contains", "value": swde, "stderr": 0.05, "n": 24} for t in ("swde", "squad_completion")]
    if res:
        write_json_atomic(rd.eval_path("recall"), {"suite": "recall", "limit": 24, "results": res, "config_hash": "h-recall", "provenance": PROV})
    if niah:
        samples = []
        for length in (64, 128, 256):
            for depth in (0.0, 0.5, 1.0):
                for k in range(2):
                    samples.append({"task": f"ablate_niah_{length}", "doc": {"length": length, "depth": depth}, "acc": 1.0 if (length < 256 and k == 0) else 0.0})
        write_json_atomic(rd.eval_path("niah"), {"suite": "niah", "results": [{"task": "ablate_niah", "metric": "acc", "value": 1 / 3, "stderr": 0.1, "n": 18}], "config_hash": "h-n", "provenance": PROV})
        (rd.eval_dir / "niah.samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    if throughput is not None:
        write_json_atomic(rd.bench_path, {"variant": variant, "scale": scale, "protocol": {"prompt_len": 64, "gen_tokens": 16, "batch_requested": 2, "batch": 2, "dtype": "float32", "device": "cpu"},
                                          "prefill_tokens_per_s": throughput * 10, "decode_tokens_per_s": throughput, "decode_bound_tokens_per_s": throughput * 2,
                                          "peak_memory_gb": 0.1, "cache_mb_measured": 0.5, "cache_mb_analytic": 0.5, "config_hash": "h-bench", "provenance": PROV})
    return rd
