"""Mamba2 state-space duality (SSD) scan: a scalar decay per head.

    h_t = exp(dt_t * A_h) * h_{t-1} + dt_t * x_t B_t^T      (h: head_dim x d_state per head)
    y_t = h_t C_t + D_h * x_t

``ssd_scan_ref`` is the chunked form (quadratic inside a chunk, a recurrence across chunks);
``ssd_scan_sequential_ref`` is the plain recurrence, kept as the ground truth for tests.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from ablate.kernels.backend import op
from ablate.kernels.selective_scan import document_continues


def _expand_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (b, l, g, n) -> (b, l, h, n): heads h share group h // (heads / g)
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def ssd_scan_sequential_ref(x, dt, A, B, C, D=None, initial_state=None, seq_idx=None):
    """x: (b, l, h, p); dt: (b, l, h) (already bias-added and softplus'd); A: (h,); B, C: (b, l, g, n);
    D: (h,); initial_state: (b, h, p, n); seq_idx: (b, l) document index: the state restarts from zero
    where it changes. Returns (y (b, l, h, p), final_state (b, h, p, n) in fp32 or wider)."""
    dtype, acc = x.dtype, torch.promote_types(x.dtype, torch.float32)
    x, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    B, C = _expand_groups(B.to(acc), x.shape[2]), _expand_groups(C.to(acc), x.shape[2])
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.to(acc)
    keep = document_continues(seq_idx).to(acc) if seq_idx is not None else None
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        if keep is not None:
            decay = decay * keep[:, t, None, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * D.to(acc)[:, None]
    return y.to(dtype), state


def ssd_scan_ref(x, dt, A, B, C, D=None, initial_state=None, chunk_size=64, seq_idx=None):
    """Chunked SSD, same contract as ``ssd_scan_sequential_ref``."""
    dtype, acc = x.dtype, torch.promote_types(x.dtype, torch.float32)
    b, l, h, p = x.shape
    x, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    B, C = _expand_groups(B.to(acc), h), _expand_groups(C.to(acc), h)
    n = B.shape[-1]
    pad = (-l) % chunk_size
    if pad:
        # zero dt on padding: no decay, no input, so the final state is unaffected
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, pad)], dim=1)
    c = x.shape[1] // chunk_size
    xc = x.view(b, c, chunk_size, h, p)
    Bc = B.view(b, c, chunk_size, h, n)
    Cc = C.view(b, c, chunk_size, h, n)
    a = (dt * A).view(b, c, chunk_size, h).permute(0, 1, 3, 2)  # (b, c, h, T) log-decay per step
    acs = torch.cumsum(a, dim=-1)
    xdt = xc * dt.view(b, c, chunk_size, h, 1)

    # inside a chunk: y_t = sum_{s<=t} exp(acs_t - acs_s) <C_t, B_s> x_s dt_s
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    seg = (acs.unsqueeze(-1) - acs.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    decay_ts = torch.exp(seg)  # (b, c, h, t, s)
    to_end = torch.exp(acs[..., -1:] - acs)  # (b, c, h, T): step t's weight in the chunk-end state
    from_start = torch.exp(acs)  # (b, c, h, T): the entering state's weight at step t
    chunk_decay = torch.exp(acs[..., -1])  # (b, c, h)
    if seq_idx is not None:
        # packed documents: drop every path that crosses a document start (mamba_ssm's seq_idx idea)
        sc = seq_idx.view(b, c, chunk_size)
        prev = torch.cat([sc[:, :1, :1], sc[:, :-1, -1:]], dim=1)  # document of the entering state
        decay_ts = decay_ts * (sc.unsqueeze(-1) == sc.unsqueeze(-2)).unsqueeze(2).to(acc)
        to_end = to_end * (sc == sc[..., -1:]).unsqueeze(2).to(acc)
        from_start = from_start * (sc == prev).unsqueeze(2).to(acc)
        chunk_decay = chunk_decay * (sc[..., -1] == prev[..., 0]).unsqueeze(-1).to(acc)

    # inside a chunk: y_t = sum_{s<=t} exp(acs_t - acs_s) <C_t, B_s> x_s dt_s
    weights = torch.einsum("bcthn,bcshn->bchts", Cc, Bc) * decay_ts
    y = torch.einsum("bchts,bcshp->bcthp", weights, xdt)

    # each chunk's contribution to the state at its end
    chunk_states = torch.einsum("bcht,bcthn,bcthp->bchpn", to_end, Bc, xdt)

    # across chunks: a short recurrence over chunk boundaries
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(acc)
    starts = []
    for i in range(c):
        starts.append(state)
        state = chunk_decay[:, i, :, None, None] * state + chunk_states[:, i]
    start = torch.stack(starts, dim=1)  # (b, c, h, p, n): state entering each chunk
    y = y + torch.einsum("bcthn,bchpn,bcht->bcthp", Cc, start, from_start)
    y = y.reshape(b, c * chunk_size, h, p)[:, :l]
    if D is not None:
        y = y + x[:, :l] * D.to(acc)[:, None]
    return y.to(dtype), state


# ---- fast paths ---------------------------------------------------------------------------
# Imported on first use, never at ``import ablate``: triton decides at import time whether its
# kernels run compiled or under the CPU interpreter (TRITON_INTERPRET), so the choice stays with
# whoever runs the code.


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _ssd_triton(*args):
    from ablate.kernels.triton.ssd import ssd_scan_triton

    return ssd_scan_triton(*args)


def _ssd_triton_available(x, *args) -> bool:
    """CUDA tensors with triton installed; on CPU only when a test asks for the interpreter."""
    if not _triton_importable():
        return False
    from ablate.kernels.triton.ssd import available

    return available(x, *args)


@functools.cache
def _mamba_chunk_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # not installed, or built for another torch / CUDA
        return None
    return mamba_chunk_scan_combined


def _ssd_mamba_ssm(x, dt, A, B, C, D=None, initial_state=None, chunk_size=64, seq_idx=None):
    # dt arrives already bias-added and softplus'd, so mamba_ssm applies neither
    y, final = _mamba_chunk_scan()(
        x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state,
        seq_idx=seq_idx.to(torch.int32) if seq_idx is not None else None, return_final_states=True,
    )
    return y, final.float()


def _ssd_mamba_ssm_available(x, dt, A, B, C, D=None, initial_state=None, chunk_size=64, seq_idx=None) -> bool:
    """mamba-ssm when it imports, on CUDA. Declined for packed documents together with an initial
    state: mamba_ssm lets the initial state into document 0 only, where we let it into the first
    step's document (untested against mamba_ssm here: no wheel for this image)."""
    if not x.is_cuda or _mamba_chunk_scan() is None:
        return False
    return seq_idx is None or initial_state is None


_SSD = op("ssd", ssd_scan_ref)
# auto order: our Triton kernels (tested here on every shape we support), then mamba-ssm
_SSD.register("triton", _ssd_triton, _ssd_triton_available)
_SSD.register("mamba_ssm", _ssd_mamba_ssm, _ssd_mamba_ssm_available)


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, chunk_size=64, seq_idx=None, backend=None):
    args = (x, dt, A, B, C, D, initial_state, chunk_size, seq_idx)
    return _SSD.choose(backend, *args)(*args)
