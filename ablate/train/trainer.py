"""The training loop and its entry point, ``run_training``: variant + data -> a run directory.

One call runs the same way in one CPU process, on one GPU, or on every rank of ``torchrun`` (FSDP2).
What it guarantees:

- the batch of step s depends on (seed, s) only, and checkpoints hold model, optimizer, scheduler,
  step, tokens and RNG states, so ``resume=True`` continues a killed run with exactly the losses an
  uninterrupted run has (bitwise on CPU fp32);
- bad input (a missing or empty data dir, a tokenizer larger than the model's vocabulary, resuming
  with another config) fails with one line before the run directory is touched;
- a non-finite loss stops the run before the optimizer applies it, naming the step and the last
  good checkpoint; out-of-memory says which knob to turn. The run is marked failed in run.json.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ablate.data.packed import PackedWindows, TokenStream, read_manifest, tokenizer_dir
from ablate.data.sources import DEFAULT_SOURCES, DataError
from ablate.rundir import RunDir, config_hash, provenance, write_json_atomic
from ablate.train import faults
from ablate.train.checkpoint import Checkpointer, latest_checkpoint
from ablate.train.metrics import MetricsLog, Reporter, Throughput
from ablate.train.optimizer import build_optimizer, build_scheduler
from ablate.train.parallelize import Dist, autocast, init_distributed, parallelize, shutdown, use_compile, use_fsdp
from ablate.train.settings import DEFAULT_DATA_TOKENS, TrainError, TrainSettings, settings_for

# config.to_dict() keys that describe the library, not the model
_NOT_IDENTITY = ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "output_attentions", "output_hidden_states", "return_dict")


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # complete | paused (stop_after_s reached; resumable) | failed
    step: int
    tokens: int
    loss: float | None
    val_loss: float | None
    val_loss_initial: float | None
    tokens_per_s: float  # steady-state (after the first steps of this process)
    config_hash: str


def _say(message: str) -> None:
    from ablate.console import console

    console.print(message, highlight=False)


def model_identity(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_IDENTITY}


def run_training(
    variant: str,
    scale: str = "tiny",
    *,
    out: str | Path | None = None,
    data: str | Path | None = None,
    steps: int | None = None,
    tokens: int | None = None,
    resume: bool = False,
    overrides: dict | None = None,
    settings: dict | TrainSettings | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train ``variant`` at ``scale`` into the run directory ``out`` (default runs/VARIANT-SCALE).

    data: a prepared data dir (``ablate data prepare``); None prepares (once, cached) the offline
    default mix with a BPE of the model's vocabulary size. steps or tokens: the run's length
    (default: the scale's). overrides: model config fields. settings: TrainSettings fields.
    Raises TrainError (one line) on bad input or a failed run."""
    d = init_distributed()
    owns_group = d.initialized
    try:
        return _run(d, variant, scale, out, data, steps, tokens, resume, overrides or {}, settings, quiet)
    finally:
        if owns_group:
            shutdown(d)


def _resolve_settings(scale: str, settings, steps: int | None, tokens: int | None) -> TrainSettings:
    if steps is not None and tokens is not None:
        raise TrainError("pass either steps or tokens, not both")
    if isinstance(settings, TrainSettings):
        s = TrainSettings(**settings.to_dict())
    else:
        s = settings_for(scale, **(settings or {}))
    if steps is not None:
        s.steps = int(steps)
    if tokens is not None:
        s.steps = s.steps_for_tokens(int(tokens))
    s.validate()
    return s


def _data_dir(data, config, scale: str, d: Dist, quiet: bool) -> Path:
    if data is not None:
        return Path(data)
    from ablate.data.prepare import ensure_prepared

    kwargs = dict(vocab_size=config.vocab_size, max_tokens=DEFAULT_DATA_TOKENS.get(scale), val_fraction=0.02)
    if d.is_main:  # rank 0 prepares (or finds the cache); the others then find it
        ensure_prepared(DEFAULT_SOURCES, f"bpe:{config.vocab_size}", quiet=quiet, **kwargs)
    d.barrier()
    return ensure_prepared(DEFAULT_SOURCES, f"bpe:{config.vocab_size}", quiet=True, **kwargs)


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _run(d: Dist, variant, scale, out, data, steps, tokens, resume, overrides, settings, quiet) -> TrainResult:
    from ablate.config import ConfigError
    from ablate.registry import resolve

    say = not quiet and d.is_main
    # ---- everything that can be wrong with the input, checked before the run dir is touched ----
    try:
        v = resolve(variant, scale, overrides=overrides)
    except ConfigError as e:
        raise TrainError(str(e)) from None
    config = v.config
    s = _resolve_settings(scale, settings, steps, tokens)
    micro_batch, accum = s.accumulation(d.world)
    if s.seq_len + config.num_meta_tokens > config.max_position_embeddings:
        raise TrainError(
            f"train setting 'seq_len': {s.seq_len} (+ {config.num_meta_tokens} meta tokens) exceeds the model's max_position_embeddings {config.max_position_embeddings}"
        )
    try:
        data_dir = _data_dir(data, config, scale, d, quiet)
        manifest = read_manifest(data_dir)
    except DataError as e:
        raise TrainError(str(e)) from None
    tok_vocab = manifest["tokenizer"]["vocab_size"]
    if tok_vocab > config.vocab_size:
        raise TrainError(
            f"tokenizer {tokenizer_dir(data_dir)} has {tok_vocab} tokens but {v.name} at scale {scale} has vocab_size {config.vocab_size}; "
            f"prepare data with --tokenizer bpe:{config.vocab_size} or override vocab_size={tok_vocab}"
        )
    run = RunDir(out or Path("runs") / f"{v.name}-{scale}")
    identity = {"variant": v.name, "scale": scale, "model": model_identity(config), "train": s.identity(), "data": manifest["data_hash"]}
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # as run.json stores it (string keys)
    chash = config_hash(identity)
    existing = run.info() if run.exists() else None
    if existing is not None:
        if not resume:
            raise TrainError(f"{run.path}: already a run directory (status {existing.get('status')}); pass --resume to continue it, or choose another --out")
        if existing.get("config_hash") != chash:
            changes = _diff(existing.get("identity", {}), identity) or ["(identity not recorded)"]
            raise TrainError(f"cannot resume {run.path}: its config differs ({'; '.join(changes[:4])}); train into a new --out instead")
    elif run.path.exists() and any(run.path.iterdir()):
        raise TrainError(f"{run.path}: exists, is not empty and has no run.json; choose another --out")

    if existing is not None and existing.get("status") == "complete":
        if say:
            _say(f"{run.path}: already complete at step {existing.get('step')}")
        r = existing.get("result", {})
        return TrainResult(run.path, "complete", existing.get("step", s.steps), existing.get("tokens", 0), r.get("loss"), r.get("val_loss"), r.get("val_loss_initial"), r.get("tokens_per_s", 0.0), chash)

    # ---- the run ----
    d.barrier()  # every rank has read the old run.json before rank 0 writes the new one
    info = {
        "variant": v.name,
        "scale": scale,
        "family": v.family,
        "overrides": overrides,
        "model_config": config.to_dict(),
        "train": s.to_dict(),
        "data": {
            "dir": str(Path(data_dir).resolve()),
            "data_hash": manifest["data_hash"],
            "source": manifest["source"],
            "tokenizer": manifest["tokenizer"],
            "train_tokens": manifest["splits"]["train"]["tokens"],
            "val_tokens": manifest["splits"]["val"]["tokens"],
        },
        "identity": identity,
        "config_hash": chash,
        "world_size": d.world,
        "device": str(d.device),
        "fsdp": use_fsdp(s, d),
        "compile": use_compile(s, d, config),
        "provenance": provenance(),
        "status": "running",
    }
    if d.is_main:
        if existing is not None:
            info["started"] = existing.get("started")
            info["resumed"] = existing.get("resumed", []) + [info["provenance"]["date"]]
        else:
            info["started"] = info["provenance"]["date"]
        info.update(step=existing.get("step", 0) if existing else 0, tokens=existing.get("tokens", 0) if existing else 0)
        run.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.run_json, info)
    d.barrier()

    compile_ = info["compile"]
    trainer = None

    def fail(message: str) -> None:
        if d.is_main and run.exists():
            run.update_info(status="failed", error=message, **({"step": trainer.step, "tokens": trainer.tokens} if trainer else {}))

    try:
        trainer = _Trainer(d, run, v, config, s, data_dir, manifest, micro_batch, accum, chash, say, compile_)
        return trainer.train(resume and existing is not None)
    except torch.OutOfMemoryError:
        at = f"at step {trainer.step + 1} " if trainer else ""
        msg = (
            f"out of memory {at}(micro batch {micro_batch} x {s.seq_len} tokens on {d.device}); "
            f"lower --micro-batch (gradient accumulation keeps the global batch) or add --activation-checkpointing"
        )
        fail(msg)
        raise TrainError(msg) from None
    except (TrainError, DataError) as e:
        fail(str(e))
        raise TrainError(str(e)) from None
    except BaseException as e:
        fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise
    finally:
        if trainer is not None:
            trainer.reporter.close()


class _Trainer:
    def __init__(self, d: Dist, run: RunDir, v, config, s: TrainSettings, data_dir: Path, manifest: dict, micro_batch: int, accum: int, chash: str, say: bool, compile_: bool = False):
        from ablate.model.lm import AblateForCausalLM

        self.d, self.run, self.v, self.config, self.s = d, run, v, config, s
        self.data_dir, self.manifest, self.micro_batch, self.accum, self.chash = data_dir, manifest, micro_batch, accum, chash
        self.step, self.tokens = 0, 0
        self.last_loss: float | None = None
        self.val_loss: float | None = None
        self.val_loss_initial: float | None = None
        self.reporter = Reporter(False, "", 0, 0)
        self.say = say

        eos = manifest["tokenizer"]["eos_id"]
        self.train_windows = PackedWindows(TokenStream(data_dir, "train", manifest), s.seq_len, eos, s.seed, config.document_masking)
        val_stream = TokenStream(data_dir, "val", manifest)
        self.val_windows = PackedWindows(val_stream, s.seq_len, eos, s.seed, config.document_masking) if len(val_stream) > s.seq_len else None

        # the same initial weights on every rank (then FSDP keeps each rank's shard)
        torch.manual_seed(s.seed)
        with torch.device(d.device):
            model = AblateForCausalLM(config)
        self.model = parallelize(model, s, d, compile_)
        self.model.train()
        self.optimizer = build_optimizer(self.model, s, d.device)
        self.scheduler = build_scheduler(self.optimizer, s)
        self.ckpt = Checkpointer(run.checkpoints_dir, d, keep=s.keep_checkpoints)
        self.metrics = MetricsLog(run, d.is_main, chash)
        self.fsdp = use_fsdp(s, d)

    # ---- pieces ------------------------------------------------------------------------------
    def _loss(self, batch) -> torch.Tensor:
        dev = self.d.device
        x = batch.input_ids.to(dev, non_blocking=True)
        y = batch.labels.to(dev, non_blocking=True)
        seq = batch.seq_idx.to(dev, non_blocking=True) if batch.seq_idx is not None else None
        with autocast(self.s, self.d):
            logits = self.model(input_ids=x, seq_idx=seq).logits
        # the loss in fp32 outside autocast, over every position (all labels are real tokens)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean token loss over the first ``val_windows`` windows of the validation split, the same
        windows at every world size (ranks take every world-th window; padding windows count zero)."""
        if self.val_windows is None or self.s.val_windows <= 0:
            return None
        n = min(self.s.val_windows, self.val_windows.num_windows)
        per_rank = math.ceil(n / self.d.world)
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.d.device)
        for start in range(0, per_rank, self.micro_batch):
            slots = [j * self.d.world + self.d.rank for j in range(start, min(per_rank, start + self.micro_batch))]
            weights = torch.tensor([1.0 if i < n else 0.0 for i in slots], dtype=torch.float64, device=self.d.device)
            batch = self.val_windows.batch([i if i < n else 0 for i in slots])
            dev = self.d.device
            x, y = batch.input_ids.to(dev), batch.labels.to(dev)
            seq = batch.seq_idx.to(dev) if batch.seq_idx is not None else None
            with autocast(self.s, self.d):
                logits = self.model(input_ids=x, seq_idx=seq).logits
            per_row = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").mean(dim=1).double()
            total += (per_row * weights).sum()
        self.model.train()
        return float(self.d.sum(total).item() / n)

    def _state(self) -> dict:
        return {"tokens": self.tokens, "config_hash": self.chash, "loss": self.last_loss, "val_loss": self.val_loss, "val_loss_initial": self.val_loss_initial}

    def _time_is_up(self, t_begin: float) -> bool:
        if not self.s.stop_after_s:
            return False
        # every rank stops at the same step: rank 0's clock decides
        return bool(self.d.broadcast(time.perf_counter() - t_begin >= self.s.stop_after_s))

    def _pause(self, t_begin: float) -> TrainResult:
        """stop_after_s reached: checkpoint (unless this step just did), mark the run paused."""
        s = self.s
        if s.save_checkpoints and not (s.ckpt_every and self.step % s.ckpt_every == 0):
            self.save_checkpoint()
        if self.d.is_main:
            self.run.update_info(status="paused", step=self.step, tokens=self.tokens)
        self.reporter.close()
        if self.say:
            _say(f"paused: {self.run.path} at step {self.step} of {s.steps} after {time.perf_counter() - t_begin:.0f} s "
                 f"(stop_after_s={s.stop_after_s:g}); continue with --resume")
        return TrainResult(self.run.path, "paused", self.step, self.tokens, self.last_loss, self.val_loss, self.val_loss_initial, 0.0, self.chash)

    def save_checkpoint(self) -> Path:
        path = self.ckpt.save(self.step, self.model, self.optimizer, self.scheduler, self._state())
        if self.d.is_main:
            self.run.update_info(step=self.step, tokens=self.tokens, last_checkpoint=str(path.relative_to(self.run.path)))
        return path

    def export(self) -> None:
        """RUN_DIR/model: save_pretrained (safetensors) + the tokenizer, written under a temporary name
        and swapped in, so a crash never leaves a half-written model/."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from ablate.model.lm import AblateForCausalLM

        hf_logging.disable_progress_bar()  # save_pretrained's shard bar would break the run's output

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.d.is_main:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(self.data_dir)))
            config = self.config.__class__(**self.config.to_dict())
            config.eos_token_id = tok.eos_token_id
            config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.device("cpu"):
                model = AblateForCausalLM(config)
            missing, unexpected = model.load_state_dict(full, strict=False)
            missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
            if missing or unexpected:
                raise TrainError(f"export: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
            tmp = self.run.path / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            write_json_atomic(tmp / "ablate_train.json", {"step": self.step, "tokens": self.tokens, "config_hash": self.chash, "val_loss": self.val_loss})
            old = self.run.path / ".model.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.run.model_dir.exists():
                self.run.model_dir.rename(old)
            tmp.rename(self.run.model_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.d.barrier()

    # ---- the loop ----------------------------------------------------------------------------
    def train(self, resume: bool) -> TrainResult:
        s, d = self.s, self.d
        t_begin = time.perf_counter()  # stop_after_s counts from here: loading and compiling included
        self.ckpt.clean_partial()
        if resume:
            path = latest_checkpoint(self.run.checkpoints_dir)
            if path is not None:
                state = self.ckpt.load(path, self.model, self.optimizer, self.scheduler)
                self.step, self.tokens = state["step"], state["tokens"]
                self.val_loss, self.val_loss_initial = state.get("val_loss"), state.get("val_loss_initial")
                self.last_loss = state.get("loss")
                if self.say:
                    _say(f"resuming {self.run.path} from {path.name} (step {self.step}, {self.tokens:,} tokens)")
            elif self.say:
                _say(f"{self.run.path}: no checkpoint yet; starting from step 0")
        self.metrics.truncate_after(self.step)
        name = f"{self.v.name} ({self.v.scale}) on {d.world} x {d.device.type}"
        self.reporter = Reporter(self.say, f"train {name}", s.steps, self.step)

        if self.step == 0:
            self.val_loss = self.val_loss_initial = self.evaluate()
            if self.val_loss is not None:
                self.metrics.log({"step": 0, "tokens": 0, "val_loss": self.val_loss})
                self.reporter.print(f"step 0  val_loss {self.val_loss:.4f}")

        meter, steady = Throughput(), Throughput()
        t_start = time.perf_counter()
        first_step = self.step
        while self.step < s.steps:
            step = self.step  # 0-based index of the optimizer step being taken
            meter.start()
            if step >= first_step + 2:  # steady state: after compilation and warm-up
                steady.start()
            loss_sum = torch.zeros((), device=d.device)
            for micro in range(self.accum):
                if self.fsdp and self.accum > 1:  # reduce-scatter gradients once, on the last micro step
                    self.model.set_requires_gradient_sync(micro == self.accum - 1)
                batch = self.train_windows.train_micro_batch(step, s.global_batch, micro, self.micro_batch, d.rank, d.world)
                loss = self._loss(batch)
                (loss / self.accum).backward()
                loss_sum += loss.detach()
            loss_avg = d.mean(loss_sum / self.accum)
            if faults.nan_loss(step + 1):
                loss_avg = loss_avg * float("nan")
            loss_value = float(loss_avg.item())
            if not math.isfinite(loss_value):
                self.optimizer.zero_grad(set_to_none=True)
                last = latest_checkpoint(self.run.checkpoints_dir)
                where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
                raise TrainError(f"non-finite loss ({loss_value}) at step {step + 1}; stopped before applying it; {where} (resume with --resume, perhaps with a lower --lr)")
            lr = self.scheduler.get_last_lr()[0]
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip if s.grad_clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens += s.tokens_per_step
            self.last_loss = loss_value
            meter.stop(s.tokens_per_step)
            if step >= first_step + 2:
                steady.stop(s.tokens_per_step)

            if self.step % s.log_every == 0 or self.step == s.steps:
                row = {
                    "step": self.step,
                    "tokens": self.tokens,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": meter.rate(),
                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                }
                self.metrics.log(row)
                self.reporter.step(row)
            last = self.step == s.steps
            if (s.eval_every and self.step % s.eval_every == 0) or last:
                self.val_loss = self.evaluate()
                if self.val_loss is not None:
                    self.metrics.log({"step": self.step, "tokens": self.tokens, "val_loss": self.val_loss})
                    self.reporter.print(f"step {self.step}  val_loss {self.val_loss:.4f}")
            if s.save_checkpoints and ((s.ckpt_every and self.step % s.ckpt_every == 0) or last):
                self.save_checkpoint()
            if s.export_model and s.export_every and self.step % s.export_every == 0 and not last:
                self.export()
            if not last and self._time_is_up(t_begin):
                return self._pause(t_begin)

        if s.export_model:
            self.export()
        tps = steady.rate(reset=False) or meter.rate(reset=False)
        result = {"loss": self.last_loss, "val_loss": self.val_loss, "val_loss_initial": self.val_loss_initial, "tokens_per_s": tps}
        if d.device.type == "cuda":
            result["peak_memory_gb"] = torch.cuda.max_memory_allocated(d.device) / 1e9
        if d.is_main:
            self.run.update_info(status="complete", step=self.step, tokens=self.tokens, result=result, finished=provenance()["date"])
        self.reporter.close()
        if self.say:
            vl = f"val_loss {self.val_loss_initial:.4f} -> {self.val_loss:.4f}, " if self.val_loss is not None and self.val_loss_initial is not None else ""
            _say(f"done: {self.run.path} step {self.step}, {vl}{tps:,.0f} tok/s; model in {self.run.model_dir}")
        return TrainResult(self.run.path, "complete", self.step, self.tokens, self.last_loss, self.val_loss, self.val_loss_initial, tps, self.chash)
