"""Training settings: one typed dataclass, defaults per scale, and which fields define a run.

Fields that change what the run computes (batch geometry, optimizer, schedule, seed, length) are its
identity: they enter ``config_hash`` and must match to resume. The others (micro batch, compile,
activation checkpointing, logging and checkpoint cadence) only change how it is computed or reported.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

SCHEDULES = ("wsd", "cosine", "constant")


class TrainError(ValueError):
    """Bad training input or a failed run; the message is one line naming the field or file."""


@dataclass
class TrainSettings:
    # what is computed (identity)
    seq_len: int = 64
    global_batch: int = 8  # sequences per optimizer step, over all ranks and micro steps
    steps: int = 40
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    schedule: str = "wsd"  # wsd (warmup, stable, decay) | cosine | constant
    warmup_steps: int = 10
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays (1 - sqrt shape)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    seed: int = 0
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    # how it is computed / reported (not identity)
    micro_batch: int = 0  # sequences per forward on each rank; 0: global_batch / world (one micro step)
    compile: str = "auto"  # auto (on GPU) | on | off
    activation_checkpointing: bool = False
    fsdp: str = "auto"  # auto (when launched with torchrun) | on | off
    log_every: int = 1
    eval_every: int = 20  # val_loss every N steps (and at step 0 and the end); 0: only at the ends
    val_windows: int = 16  # sequences of the validation split scored per evaluation
    ckpt_every: int = 20  # 0: only at the end
    keep_checkpoints: int = 2
    export_every: int = 0  # also export model/ every N steps (0: at the end only)
    save_checkpoints: bool = True  # False: no checkpoints at all (throughput measurements)
    export_model: bool = True  # False: no model/ at the end (throughput measurements)
    # wall-clock seconds after which the run checkpoints and pauses (status 'paused'; --resume goes on);
    # 0: no limit. For fixed-length machine leases: a sweep passes what is left of its --time-limit
    stop_after_s: float = 0.0
    extra: dict = field(default_factory=dict)

    IDENTITY = (
        "seq_len", "global_batch", "steps", "lr", "min_lr_ratio", "schedule", "warmup_steps", "decay_fraction",
        "weight_decay", "beta1", "beta2", "eps", "grad_clip", "seed", "dtype",
    )

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def need(ok: bool, field_: str, msg: str) -> None:
            if not ok:
                raise TrainError(f"train setting '{field_}': {msg}")

        for f in ("seq_len", "global_batch", "steps"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, f"must be a positive integer, got {getattr(self, f)!r}")
        need(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        need(self.schedule in SCHEDULES, "schedule", f"unknown schedule {self.schedule!r}; one of {', '.join(SCHEDULES)}")
        need(0 <= self.warmup_steps, "warmup_steps", "must be >= 0")
        need(0 <= self.decay_fraction <= 1, "decay_fraction", "must be in [0, 1]")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        need(self.micro_batch >= 0, "micro_batch", "must be >= 0")
        need(isinstance(self.stop_after_s, (int, float)) and self.stop_after_s >= 0, "stop_after_s", f"must be a number of seconds >= 0 (0: no limit), got {self.stop_after_s!r}")
        need(self.dtype in ("auto", "fp32", "bf16"), "dtype", "one of auto, fp32, bf16")
        need(self.compile in ("auto", "on", "off"), "compile", "one of auto, on, off")
        need(self.fsdp in ("auto", "on", "off"), "fsdp", "one of auto, on, off")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")

    def accumulation(self, world: int) -> tuple[int, int]:
        """(micro batch per rank, micro steps per optimizer step) for a world size."""
        per_rank, rem = divmod(self.global_batch, world)
        if rem:
            raise TrainError(f"train setting 'global_batch': {self.global_batch} sequences do not split over {world} processes")
        micro = self.micro_batch or per_rank
        if per_rank % micro:
            raise TrainError(f"train setting 'micro_batch': {micro} does not divide the {per_rank} sequences per process (global_batch {self.global_batch} / {world})")
        return micro, per_rank // micro

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def steps_for_tokens(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.tokens_per_step))


# defaults per scale: tiny runs in seconds on a CPU; proxy is minutes on one GPU; paper is the
# study's recipe shape (2k context, ~1M-token batches), used for throughput and planning
SCALE_DEFAULTS: dict[str, dict] = {
    "tiny": dict(seq_len=64, global_batch=8, steps=40, lr=3e-3, warmup_steps=5, eval_every=20, val_windows=16, ckpt_every=20),
    "proxy": dict(seq_len=1024, global_batch=32, steps=1000, lr=2e-3, warmup_steps=50, eval_every=100, val_windows=64, ckpt_every=200),
    "paper": dict(seq_len=2048, global_batch=512, micro_batch=4, steps=100_000, lr=1e-3, warmup_steps=2000, eval_every=1000, val_windows=128, ckpt_every=1000),
}

# tokens prepared for the embedded default corpus when no --data is given (None: until the Python
# standard library part runs out, ~8M tokens at an 8k vocabulary)
DEFAULT_DATA_TOKENS = {"tiny": 300_000, "proxy": None, "paper": None}


def settings_for(scale: str, **overrides) -> TrainSettings:
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise TrainError(f"train setting '{bad[0]}': unknown; known: {', '.join(sorted(known - {'extra'}))}")
    values = dict(SCALE_DEFAULTS.get(scale, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    s = TrainSettings(**values)
    s.validate()
    return s
