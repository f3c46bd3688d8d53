"""Shared check for the Triton fast paths' torch custom ops."""

from __future__ import annotations

import torch


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
