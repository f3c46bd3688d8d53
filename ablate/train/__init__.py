"""Training: trainer loop, optimizer and schedule, FSDP2 wrapping, DCP checkpoints, metrics.

The entry point other stages call::

    from ablate.train import run_training
    result = run_training("hymba-1.5b", "tiny", out="runs/h", steps=40)   # -> TrainResult
"""

_LAZY = {
    "run_training": "ablate.train.trainer",
    "TrainResult": "ablate.train.trainer",
    "TrainSettings": "ablate.train.settings",
    "TrainError": "ablate.train.settings",
    "settings_for": "ablate.train.settings",
}


def __getattr__(name):  # heavy imports (torch) only when used, so `ablate --help` stays fast
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
