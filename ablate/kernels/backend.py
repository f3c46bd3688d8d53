"""Run-time choice of an op's implementation.

Every op has a ``reference`` implementation (pure PyTorch, runs anywhere). Fast paths register
themselves under other names. The choice is, in order: the ``ABLATE_<OP>_BACKEND`` environment
variable, a per-call ``backend=`` argument, then ``auto`` (the first registered fast path whose
``available(*tensors)`` says yes, else the reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Op:
    name: str
    reference: Callable
    fast_paths: dict[str, tuple[Callable, Callable]] = field(default_factory=dict)

    def register(self, name: str, fn: Callable, available: Callable = lambda *a, **k: True) -> None:
        self.fast_paths[name] = (fn, available)

    def choose(self, backend: str | None, *args, **kwargs) -> Callable:
        choice = os.environ.get(f"ABLATE_{self.name.upper()}_BACKEND") or backend or "auto"
        if choice == "reference":
            return self.reference
        if choice == "auto":
            for fn, available in self.fast_paths.values():
                if available(*args, **kwargs):
                    return fn
            return self.reference
        if choice not in self.fast_paths:
            known = ", ".join(["auto", "reference", *self.fast_paths])
            raise ValueError(f"unknown {self.name} backend {choice!r}; known: {known}")
        return self.fast_paths[choice][0]


OPS: dict[str, Op] = {}


def op(name: str, reference: Callable) -> Op:
    OPS[name] = Op(name, reference)
    return OPS[name]
