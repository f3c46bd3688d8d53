"""The GPU check of training, in one command (results under --out, a compact summary printed last)::

    python -m ablate.train.proxy_run --out OUT                 # one GPU (H100): < 8 minutes
    python -m ablate.train.proxy_run --out OUT --gpus 2        # two GPUs: adds torchrun + FSDP2 runs

1. prepares the offline corpus (Python stdlib + synthetic recall, BPE 8192) once;
2. trains a proxy-scale variant (hymba-1.5b at scale proxy, ~15M parameters) for a time budget through
   the real trainer (bf16 autocast, WSD schedule; torch.compile with --compile on) and reports
   validation loss at step 0 and at the end, and tokens/s; with --gpus 2 the same run again under
   torchrun + FSDP2 on 2 GPUs: the loss curves compared step by step, and the speed-up;
3. measures training tokens/s of 1B variants (table3-llama3, table3-hymba at scale paper, 2k context)
   for a few steps (1 GPU: plain; 2 GPUs: FSDP2), and projects GPU-hours to 100B tokens.

Every training run is a subprocess of ``python -m ablate.train`` (the CLI the user runs), so a crash,
an out-of-memory or a hung compile costs one phase, never the summary. Run directories (with
checkpoints and models) stay under --work; --out gets run.json + metrics.jsonl copies and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENS_100B = 100e9
H100_BF16_DENSE_FLOPS = 989e12


def _log(msg: str) -> None:
    print(f"[proxy_run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kernel_choices(variant: str, scale: str, device: str = "cuda", seq_len: int = 256) -> dict[str, list[str]]:
    """Which implementation each kernel op picks for this variant on the device (see
    ablate.train.parallelize.kernel_choices)."""
    from ablate.registry import resolve
    from ablate.train.parallelize import kernel_choices as choices

    return choices(resolve(variant, scale).config, device, seq_len)


def _compile_ok(choices: dict) -> bool:
    from ablate.train.parallelize import uses_reference_scan

    # a reference scan is a Python loop over the sequence: compiling it would unroll thousands of steps
    return not uses_reference_scan(choices)


class Runner:
    def __init__(self, out: Path, work: Path, data: Path, env: dict, deadline: float):
        self.out, self.work, self.data, self.env, self.deadline = out, work, data, env, deadline

    def left(self) -> float:
        return self.deadline - time.time()

    def train(self, name: str, variant: str, scale: str, args: list, gpus: int = 1, timeout: float = 300) -> dict:
        """One training subprocess; returns what its run directory says (also when it failed or timed out)."""
        run_dir = self.work / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        launcher = [sys.executable, "-m", "ablate.train"] if gpus == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus), "-m", "ablate.train"]
        cmd = [*launcher, variant, "--scale", scale, "--data", str(self.data), "--out", str(run_dir), "-q", *map(str, args)]
        timeout = max(30.0, min(timeout, self.left()))
        _log(f"{name}: {' '.join(cmd[1:])} (timeout {timeout:.0f}s)")
        t0 = time.time()
        # a session of its own, so a timeout ends torchrun's workers too (they hold GPU memory)
        p = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
            rc = "timeout"
        wall = time.time() - t0
        rows = []
        if (run_dir / "metrics.jsonl").exists():
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip().startswith("{")]
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        keep = self.out / "runs" / name
        keep.mkdir(parents=True, exist_ok=True)
        for f in ("run.json", "metrics.jsonl"):
            if (run_dir / f).exists():
                shutil.copy(run_dir / f, keep / f)
        (keep / "stderr.txt").write_text(err[-20000:] if err else "")
        train_rows = [r for r in rows if "loss" in r]
        steady = [r["tokens_per_s"] for r in train_rows if r["step"] > 3] or [r["tokens_per_s"] for r in train_rows[1:]]
        res = {
            "name": name, "variant": variant, "scale": scale, "gpus": gpus, "rc": rc, "wall_s": round(wall, 1),
            "status": info.get("status", "missing"), "error": info.get("error") or (_last_error(err) if rc not in (0,) else None),
            "steps": len(train_rows), "compile": info.get("compile"), "fsdp": info.get("fsdp"),
            "tokens_per_s": statistics.median(steady) if steady else None,
            "loss_first": train_rows[0]["loss"] if train_rows else None, "loss_last": train_rows[-1]["loss"] if train_rows else None,
            "val": {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
            "losses": {r["step"]: r["loss"] for r in train_rows},
            "peak_memory_gb": (info.get("result") or {}).get("peak_memory_gb"),
            "params": None,
        }
        _log(f"{name}: rc={rc} status={res['status']} steps={res['steps']} tok/s={_fmt(res['tokens_per_s'])} wall={wall:.0f}s" + (f" error: {res['error']}" if res["error"] else ""))
        return res


def _last_error(err: str) -> str | None:
    lines = [line for line in (err or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line.strip()[:300]
    return lines[-1][:300] if lines else None


def _fmt(x, nd=0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=None, help="run directories and data cache (default: a temp dir)")
    ap.add_argument("--gpus", type=int, default=1, choices=(1, 2))
    ap.add_argument("--budget-s", type=float, default=420, help="wall-clock budget of the whole command")
    ap.add_argument("--variant", default="hymba-1.5b", help="the proxy-scale variant trained")
    ap.add_argument("--train-s", type=float, default=120, help="training seconds targeted for the proxy run")
    ap.add_argument("--paper-variants", default="table3-llama3,table3-hymba")
    ap.add_argument("--compile", default="off", choices=("auto", "on", "off"),
                    help="off (default: compile time does not fit the budget reliably), on, or auto (on unless a kernel falls back to a Python-loop reference scan)")
    ap.add_argument("--smoke", action="store_true", help="a CPU rehearsal of this script at scale tiny (for tests)")
    args = ap.parse_args(argv)
    # sizes: (scale, seq, batch, micro) of the proxy run, and (scale, seq) of the throughput runs
    proxy_scale, seq, batch = ("tiny", 32, 4) if args.smoke else ("proxy", 1024, 32)
    big_scale, big_seq = ("tiny", 64) if args.smoke else ("paper", 2048)
    vocab = 256 if args.smoke else 8192
    if args.smoke:
        args.train_s, args.budget_s = min(args.train_s, 8), min(args.budget_s, 300)

    t_start = time.time()
    deadline = t_start + args.budget_s
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ablate-proxy-run-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ABLATE_DATA_CACHE=str(work / "data-cache"),
               TOKENIZERS_PARALLELISM="true", TORCHDYNAMO_SUPPRESS_ERRORS="1")
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "ABLATE_DATA_CACHE")})

    import torch

    from ablate.bench.accounting import accounting_row
    from ablate.data.prepare import ensure_prepared
    from ablate.data.sources import DEFAULT_SOURCES
    from ablate.registry import resolve
    from ablate.rundir import provenance, write_json_atomic

    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        env["ABLATE_DEVICE"] = "cpu"
    elif not torch.cuda.is_available():
        print("error: no CUDA device; this check is for a GPU machine (--smoke rehearses it on CPU)", file=sys.stderr)
        return 2
    elif args.gpus > torch.cuda.device_count():
        print(f"error: --gpus {args.gpus} but {torch.cuda.device_count()} visible", file=sys.stderr)
        return 2
    summary: dict = {"provenance": provenance(), "gpus": args.gpus, "device": "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(), "budget_s": args.budget_s}

    # 1. data
    t0 = time.time()
    data = ensure_prepared(DEFAULT_SOURCES, f"bpe:{vocab}", vocab_size=vocab, max_tokens=200_000 if args.smoke else None, val_fraction=0.01, quiet=True)
    manifest = json.loads((data / "manifest.json").read_text())
    summary["data"] = {"source": DEFAULT_SOURCES, "tokenizer": f"bpe:{vocab}", "train_tokens": manifest["splits"]["train"]["tokens"],
                       "val_tokens": manifest["splits"]["val"]["tokens"], "prepare_s": round(time.time() - t0, 1), "data_hash": manifest["data_hash"]}
    _log(f"data: {summary['data']}")
    runner = Runner(out, work, data, env, deadline)

    # 2. proxy-scale training
    choices = kernel_choices(args.variant, proxy_scale, device)
    compile_ = args.compile if args.compile != "auto" else ("on" if _compile_ok(choices) else "off")
    summary["proxy_kernels"] = choices
    _log(f"kernels of {args.variant} ({proxy_scale}): {choices}; compile {compile_}")
    micro = batch if _compile_ok(choices) or args.smoke else batch // 2  # a reference scan materialises (tokens x width x state) tensors
    base = ["--seq-len", seq, "--batch", batch, "--micro-batch", micro, "--compile", compile_, "--lr", "2e-3"]
    probe = runner.train("probe", args.variant, proxy_scale, base + ["--steps", 6, "--eval-every", 0, "--set", "val_windows=8",
                                                               "--set", "save_checkpoints=false", "--set", "export_model=false"], timeout=150)
    tps = probe["tokens_per_s"] or 20_000
    steps = int(max(60, min(4000, args.train_s * tps / (seq * batch))))
    reserve = (30 if args.smoke else 200) * (1 if args.gpus == 1 else 2)  # for the 1B measurements
    steps_budget = (runner.left() - reserve) * tps / (seq * batch) / (1 if args.gpus == 1 else 1.5)
    steps = int(max(40, min(steps, steps_budget)))
    proxy_args = base + ["--steps", steps, "--warmup", max(10, steps // 20), "--eval-every", max(10, steps // 5), "--ckpt-every", max(10, steps // 2),
                         "--keep", 1, "--set", "val_windows=64"]
    proxy = runner.train("proxy-1gpu", args.variant, proxy_scale, proxy_args, timeout=args.train_s * 2 + 120)
    summary["proxy"] = {"variant": args.variant, "params": accounting_row(resolve(args.variant, proxy_scale), seq)["params"], "seq_len": seq,
                        "global_batch": batch, "steps": steps, "compile": compile_, "runs": [proxy]}
    if args.gpus == 2:
        proxy2 = runner.train("proxy-2gpu-fsdp", args.variant, proxy_scale, proxy_args, gpus=2, timeout=args.train_s * 2 + 120)
        summary["proxy"]["runs"].append(proxy2)
        common = sorted(set(proxy["losses"]) & set(proxy2["losses"]), key=int)
        if common:
            diffs = [abs(proxy["losses"][k] - proxy2["losses"][k]) for k in common]
            summary["proxy"]["fsdp_vs_single"] = {
                "steps_compared": len(common), "max_abs_loss_diff": max(diffs), "mean_abs_loss_diff": sum(diffs) / len(diffs),
                "final_val": [list(proxy["val"].values())[-1] if proxy["val"] else None, list(proxy2["val"].values())[-1] if proxy2["val"] else None],
                "speedup": (proxy2["tokens_per_s"] / proxy["tokens_per_s"]) if proxy["tokens_per_s"] and proxy2["tokens_per_s"] else None,
            }

    # 3. 1B throughput and the 100B-token projection
    summary["paper_scale"] = []
    for variant in [v for v in args.paper_variants.split(",") if v]:
        if runner.left() < 60:
            _log(f"{variant}: skipped (budget)")
            summary["paper_scale"].append({"variant": variant, "skipped": "budget"})
            continue
        ch = kernel_choices(variant, big_scale, device)
        comp = args.compile if args.compile != "auto" else ("on" if _compile_ok(ch) else "off")
        params = accounting_row(resolve(variant, big_scale), big_seq)["params"]
        entry = {"variant": variant, "params": params, "kernels": ch, "seq_len": big_seq, "attempts": []}
        for micro_b, ac in ((4, False), (2, False), (1, True)):
            if runner.left() < 60:
                break
            gb = micro_b * 2 * args.gpus  # two micro steps per optimizer step: accumulation is exercised
            run_args = ["--seq-len", big_seq, "--batch", gb, "--micro-batch", micro_b, "--steps", 6, "--compile", "off" if args.smoke else comp, "--lr", "3e-4", "--warmup", 2,
                        "--eval-every", 0, "--set", "val_windows=0", "--set", "save_checkpoints=false", "--set", "export_model=false"]
            if ac:
                run_args.append("--activation-checkpointing")
            name = f"{variant}-{big_scale}-{args.gpus}gpu-mb{micro_b}{'-ac' if ac else ''}"
            r = runner.train(name, variant, big_scale, run_args, gpus=args.gpus, timeout=min(240, runner.left() - 20))
            r.update(micro_batch=micro_b, activation_checkpointing=ac, global_batch=gb)
            entry["attempts"].append(r)
            if r["tokens_per_s"]:
                tps = r["tokens_per_s"]
                entry.update(tokens_per_s=tps, micro_batch=micro_b, activation_checkpointing=ac, compile=comp, gpus=args.gpus, peak_memory_gb=r["peak_memory_gb"],
                             gpu_hours_100B=args.gpus * TOKENS_100B / tps / 3600,
                             mfu_6N=6 * params * tps / (args.gpus * H100_BF16_DENSE_FLOPS))
                break
            if "out of memory" not in (r["error"] or ""):
                break
        summary["paper_scale"].append(entry)

    summary["total_s"] = round(time.time() - t_start, 1)
    write_json_atomic(out / "summary.json", summary)
    (out / "summary.md").write_text(render_markdown(summary))
    print(render_markdown(summary), flush=True)
    return 0


def render_markdown(s: dict) -> str:
    lines = [f"# Training check on {s['device']} x{s['gpus']}", "",
             f"{s['provenance']['date']}, git {s['provenance']['git_sha']}, torch {s['provenance']['torch']}; command `python -m ablate.train.proxy_run --gpus {s['gpus']}`; total {s.get('total_s')} s", ""]
    d = s.get("data", {})
    lines += [f"Data: `{d.get('source')}`, {d.get('tokenizer')}: {d.get('train_tokens', 0):,} train / {d.get('val_tokens', 0):,} val tokens (prepared in {d.get('prepare_s')} s)", ""]
    p = s.get("proxy")
    if p:
        lines += [f"## Proxy scale: {p['variant']} ({p['params'] / 1e6:.1f}M parameters), seq {p['seq_len']}, batch {p['global_batch']}, {p['steps']} steps, compile {p['compile']}",
                  f"kernels: {s.get('proxy_kernels')}", "",
                  "| run | GPUs | status | steps | val loss step 0 | val loss end | train loss end | tokens/s | peak GB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in p["runs"]:
            vals = list(r["val"].values())
            lines.append(f"| {r['name']} | {r['gpus']} | {r['status']} | {r['steps']} | {_fmt(vals[0] if vals else None, 3)} | {_fmt(vals[-1] if len(vals) > 1 else None, 3)} | "
                         f"{_fmt(r['loss_last'], 3)} | {_fmt(r['tokens_per_s'])} | {_fmt(r['peak_memory_gb'], 1)} |")
        if "fsdp_vs_single" in p:
            f = p["fsdp_vs_single"]
            lines += ["", f"FSDP2 on 2 GPUs vs 1 GPU: {f['steps_compared']} steps compared, max |loss diff| {f['max_abs_loss_diff']:.4f}, mean {f['mean_abs_loss_diff']:.4f}; "
                      f"speed-up {_fmt(f['speedup'], 2)}x"]
        lines.append("")
    if s.get("paper_scale"):
        lines += ["## Paper scale (1B, seq 2048): measured training throughput and projected GPU-hours to 100B tokens", "",
                  "| variant | params | GPUs | micro batch | act. ckpt | compile | tokens/s | peak GB | GPU-hours to 100B | MFU (6N) | kernels |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in s["paper_scale"]:
            if "tokens_per_s" not in e:
                why = e.get("skipped") or "; ".join(str(a.get("error")) for a in e.get("attempts", [])) or "no measurement"
                lines.append(f"| {e['variant']} | {_fmt(e.get('params', 0) / 1e9, 2)}B | {s['gpus']} | - | - | - | failed: {why} | - | - | - | {e.get('kernels', '')} |")
                continue
            lines.append(f"| {e['variant']} | {e['params'] / 1e9:.2f}B | {e['gpus']} | {e['micro_batch']} | {e['activation_checkpointing']} | {e['compile']} | {_fmt(e['tokens_per_s'])} | "
                         f"{_fmt(e['peak_memory_gb'], 1)} | {_fmt(e['gpu_hours_100B'])} | {e['mfu_6N']:.1%} | {e['kernels']} |")
        lines += ["", "GPU-hours = GPUs x 100e9 / (tokens/s) / 3600; MFU counts 6 x parameters FLOPs per token against 989 TFLOP/s (H100 dense bf16), attention FLOPs excluded."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
