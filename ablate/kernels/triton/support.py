"""When a Triton fast path may run. Imports nothing from triton itself, so the op modules can ask
without paying for (or breaking on) a triton import.

Triton kernels run on CUDA tensors. On CPU they run only under Triton's interpreter, which is far
too slow for real work, so CPU is opt-in for tests: ``ABLATE_TRITON_ON_CPU=1`` together with
``TRITON_INTERPRET=1`` (the latter must be set before a kernel module is first imported, because
``triton.jit`` reads it when it decorates).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting_on_cpu() -> bool:
    return os.environ.get("ABLATE_TRITON_ON_CPU") == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def can_run(*tensors: torch.Tensor | None) -> bool:
    """All given tensors live where a Triton kernel can read them (None entries are skipped)."""
    present = [t for t in tensors if t is not None]
    if not present or not triton_installed():
        return False
    if all(t.is_cuda for t in present):
        return len({t.device for t in present}) == 1
    if all(t.device.type == "cpu" for t in present):
        return interpreting_on_cpu()
    return False


@functools.cache
def package_installed(name: str) -> bool:
    """An optional accelerator (mamba_ssm, causal_conv1d) is importable. Found without importing it:
    their imports pull in compiled extensions."""
    return importlib.util.find_spec(name) is not None


def env_ints(name: str) -> tuple[int, ...] | None:
    """A comma-separated launch configuration from the environment (tuning sweeps, tests), or None."""
    value = os.environ.get(name)
    return tuple(int(v) for v in value.split(",")) if value else None
