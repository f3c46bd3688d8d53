"""Elementwise fusion for the decode step: small functions compiled into one kernel each.

A decode step at batch 128 moves few bytes per layer, so even replayed from a CUDA graph its time is
set by the number of kernels: eager RMSNorm is seven (cast, square, mean, add, rsqrt, two multiplies),
RoPE six, the conv step six, and a Hymba layer has seven norms. Functions marked ``@fusable`` run
through ``torch.compile`` (one Triton kernel each) while ``fused_elementwise()`` is active, which the
static decoder turns on around its warm-up and capture on GPU (``ablate.model.static_decode``). The
step's matmuls, attention and state updates are untouched.

Only the decode step: prefill and evaluation see a new length with every batch, and training
compiles the whole model anyway (inside a compiled region the plain function is traced). Shapes are
compiled dynamic, so one graph serves every batch and layer of a width.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

_ACTIVE = contextvars.ContextVar("ablate_fused_elementwise", default=False)
# a function compiles once per width and dtype it meets (parameters keep static shapes): a model has
# a handful, a benchmark suite of 21 models in one process many more than dynamo's default of 8
RECOMPILE_LIMIT = 512
BACKEND = "inductor"  # tests of the mechanism use "eager": the same dynamo graphs, no code generation


@contextlib.contextmanager
def fused_elementwise(enabled: bool = True):
    """Within this block, ``@fusable`` functions run compiled (when ``enabled``)."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def fusable(fn):
    """Run ``fn`` compiled while ``fused_elementwise()`` is active, as written otherwise (the
    reference: tests hold the two equal)."""
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if torch.compiler.is_compiling() or not _ACTIVE.get():  # traced first: no context var in a graph
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend=BACKEND)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)

    wrapper.reference = fn
    return wrapper
