"""Small shared layers: RMSNorm, the SwiGLU FFN, rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ablate.kernels.backend import op
from ablate.kernels.triton.support import can_run
from ablate.model.elementwise import fusable


@fusable
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


@fusable
def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)): a residual add and the next sublayer's norm, one kernel when
    fused (the sum is rounded to x's dtype first, as the unfused add would)."""
    x = x + delta
    return x, rms_norm.reference(x, weight, eps)


@fusable
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the packed projection (gate, up)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gate_up_silu_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the packed gate/up projection (weight: gate's rows, then up's)."""
    return silu_mul(F.linear(x, weight))


def _gate_up_silu_triton(x, weight):
    from ablate.kernels.triton.swiglu import gate_up_silu_triton

    return gate_up_silu_triton(x, weight)


def _gate_up_silu_available(x, weight) -> bool:
    # inference only (the kernel has no backward), and not inside a compiled graph (training compiles
    # the model; the reference is what it traces)
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return False
    if not can_run(x, weight):
        return False
    from ablate.kernels.triton.swiglu import supported

    return supported(x, weight)


_GATE_UP_SILU = op("gate_up_silu", gate_up_silu_ref)
_GATE_UP_SILU.register("triton", _gate_up_silu_triton, _gate_up_silu_available)


def gate_up_silu(x: torch.Tensor, weight: torch.Tensor, backend=None) -> torch.Tensor:
    """silu(gate) * up; at decode (few rows, GPU) one kernel with the projection
    (``ablate.kernels.triton.swiglu``), else the projection and the compiled gate."""
    return _GATE_UP_SILU.choose(backend, x, weight)(x, weight)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def after_add(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, norm(x + delta)), x itself when there is no delta: the residual stream and
        the normalized input of the sublayer that reads it."""
        if delta is None:
            return x, self(x)
        return add_rms_norm(x, delta, self.weight, self.eps)


class SwiGLU(nn.Module):
    """The Llama FFN: down(silu(gate(x)) * up(x)), gate and up as one projection (one matmul;
    ``ablate.model.hf_import`` packs Llama's two)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gate_up_silu(x, self.gate_up_proj.weight))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape (b or 1, 1, l, head_dim) for absolute positions (b or 1, l): Llama's
    rotate-half convention."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


@fusable
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@fusable
def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys: one kernel when fused."""
    return apply_rope.reference(q, cos, sin), apply_rope.reference(k, cos, sin)
