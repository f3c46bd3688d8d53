"""Causal depthwise conv1d (+ optional SiLU), the short convolution of Mamba / Mamba2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.kernels.backend import op


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (b, c, l); weight: (c, k); initial_state: (b, c, k-1), the inputs before x; seq_idx: (b, l)
    document index of each position: an output never mixes inputs of another document (the initial
    state counts as the first position's document).

    Returns (y of shape (b, c, l), final_state of shape (b, c, k-1): the last k-1 inputs, what a
    decoder needs to continue)."""
    channels, width = weight.shape
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], channels, width - 1)
    full = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    w = weight.to(x.dtype)
    if seq_idx is None:
        y = F.conv1d(full, w.unsqueeze(1), None, groups=channels)
    else:
        # tap j of output t reads input t - (k-1) + j; drop the taps that cross a document start
        seq = torch.cat([seq_idx[:, :1].expand(-1, width - 1), seq_idx], dim=-1)
        taps = full.unfold(-1, width, 1)  # (b, c, l, k)
        same = seq.unfold(-1, width, 1) == seq_idx.unsqueeze(-1)  # (b, l, k)
        y = torch.einsum("bclk,ck->bcl", taps * same.unsqueeze(1).to(x.dtype), w)
    if bias is not None:
        y = y + bias.to(x.dtype)[:, None]
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return y, full[..., full.shape[-1] - (width - 1) :]


_CONV = op("conv1d", causal_conv1d_ref)


def causal_conv1d(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None, backend=None):
    fn = _CONV.choose(backend, x, weight, bias, activation, initial_state, seq_idx)
    return fn(x, weight, bias, activation, initial_state, seq_idx)
