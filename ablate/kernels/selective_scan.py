"""Mamba (v1) selective scan: per-channel diagonal A, input-dependent dt, B, C.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        (per channel d, state n)
    y_t = <h_t, C_t> + D * u_t,  then gated by SiLU(z_t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.kernels.backend import op


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,);
    initial_state: (b, d, n); seq_idx: (b, l) document index: the state restarts from zero where it
    changes. Sequential over l, in fp32.

    Returns (y of shape (b, d, l) in u's dtype, last_state (b, d, n) in fp32)."""
    dtype, acc = u.dtype, torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, l, n)
    if seq_idx is not None:
        decay = decay * document_continues(seq_idx).to(acc)[:, None, :, None]
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, l, n)
    Ct = C.transpose(1, 2)  # (b, l, n)
    h = u.new_zeros(batch, dim, A.shape[-1]) if initial_state is None else initial_state.to(acc)
    ys = []
    for t in range(length):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Ct[:, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype), h


def document_continues(seq_idx: torch.Tensor) -> torch.Tensor:
    """(b, l) bool: position t continues the document of t-1 (the first position always does, so an
    initial state carries in)."""
    same = seq_idx[:, 1:] == seq_idx[:, :-1]
    return torch.cat([torch.ones_like(seq_idx[:, :1], dtype=torch.bool), same], dim=1)


_SCAN = op("selective_scan", selective_scan_ref)


# ---- fast paths: each module is imported on first use, so a CPU-only install never loads triton or
# the CUDA extensions


def _triton_available(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None, seq_idx=None):
    from ablate.kernels.triton.support import FLOAT_DTYPES, can_run

    floats = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    return (
        can_run(*floats, seq_idx)
        and all(t.dtype in FLOAT_DTYPES for t in floats)
        and B.dim() == 3
        and C.dim() == 3
        and A.shape[-1] <= 256  # one program holds all states of its channels
    )


def _triton(*args):
    from ablate.kernels.triton.selective_scan import selective_scan_triton

    return selective_scan_triton(*args)


def _mamba_ssm_available(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None, seq_idx=None):
    from ablate.kernels.triton.support import package_installed

    # mamba_ssm's Mamba1 scan takes neither an initial state nor packed-document indices
    return (
        package_installed("mamba_ssm")
        and initial_state is None
        and seq_idx is None
        and u.is_cuda
        and u.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and B.dim() == 3
        and C.dim() == 3
    )


def _mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None, seq_idx=None):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    # its CUDA kernel wants delta, z, B, C in u's dtype and A, D, delta_bias in fp32. Its backward
    # ignores the final state's gradient (no training path differentiates through it).
    dt = u.dtype
    y, last = selective_scan_fn(
        u,
        delta.to(dt),
        A.float(),
        B.to(dt),
        C.to(dt),
        D.float() if D is not None else None,
        z.to(dt) if z is not None else None,
        delta_bias.float() if delta_bias is not None else None,
        delta_softplus,
        return_last_state=True,
    )
    return y, last.float()


_SCAN.register("triton", _triton, _triton_available)
_SCAN.register("mamba_ssm", _mamba_ssm, _mamba_ssm_available)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None, seq_idx=None, backend=None
):
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx)
    return _SCAN.choose(backend, *args)(*args)
