"""Shared helpers of the Triton kernel tests: running the kernels on CPU through triton's
interpreter, and checking their torch custom ops under torch.compile."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch


def use_interpreter(monkeypatch, module_name: str, kernel: str, **config) -> None:
    """Opt the CPU into a Triton fast path through the interpreter (tests/conftest.py switched it on
    before triton was imported); ``config``: launch-configuration environment variables, small
    enough that tiny shapes span several blocks."""
    import triton

    if type(triton.language.standard.zeros).__name__ != "InterpretedFunction":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1 in the environment")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ABLATE_TRITON_ON_CPU", "1")
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    module = sys.modules.get(module_name)
    if module is not None and type(getattr(module, kernel)).__name__ != "InterpretedFunction":
        importlib.reload(module)  # imported before TRITON_INTERPRET was set: re-decorate the kernels


def assert_compiles_like_eager(loss, args) -> None:
    """``loss(*args)`` compiled with fullgraph (a graph break fails) gives the eager value and the
    eager gradients of every floating-point tensor argument."""

    def grads(fn):
        a = [x.clone().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x for x in args]
        out = fn(*a)
        return [out, *torch.autograd.grad(out, [x for x in a if torch.is_tensor(x) and x.requires_grad])]

    eager = grads(loss)
    compiled = grads(torch.compile(loss, backend="aot_eager", fullgraph=True))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
