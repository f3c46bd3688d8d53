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


def conv_final_state(x: torch.Tensor, initial_state: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last k-1 inputs of [initial_state, x], as ``causal_conv1d_ref`` returns them, without
    concatenating all of x (fast paths use this)."""
    length = x.shape[-1]
    if length >= width - 1:
        return x[..., length - (width - 1) :].clone()
    init = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(*x.shape[:2], width - 1)
    return torch.cat([init[..., length:], x], dim=-1)


_CONV = op("conv1d", causal_conv1d_ref)


# ---- fast paths: each module is imported on first use, so a CPU-only install never loads triton or
# the CUDA extensions


def _triton_available(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None):
    from ablate.kernels.triton.support import FLOAT_DTYPES, can_run

    floats = [t for t in (x, weight, bias, initial_state) if t is not None]
    return (
        can_run(*floats, seq_idx)
        and all(t.dtype in FLOAT_DTYPES for t in floats)
        and x.dim() == 3
        and weight.shape[1] <= 8  # the taps are unrolled
        and activation in (None, "silu")
    )


def _triton(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None):
    from ablate.kernels.triton.conv1d import causal_conv1d_triton

    return causal_conv1d_triton(x, weight, bias, activation, initial_state, seq_idx)


def _causal_conv1d_available(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None):
    from ablate.kernels.triton.support import package_installed

    channel_last = x.dim() == 3 and x.stride(1) == 1
    return (
        package_installed("causal_conv1d")
        and x.is_cuda
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and 2 <= weight.shape[1] <= 4
        and activation in (None, "silu")
        # its kernels take an initial state or document indices only in channel-last layout, and we
        # do not rely on how it combines the two
        and (initial_state is None or channel_last)
        and (seq_idx is None or channel_last)
        and (initial_state is None or seq_idx is None)
    )


def _causal_conv1d(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None):
    from causal_conv1d import causal_conv1d_fn

    init = None
    if initial_state is not None:  # channel-last, in x's dtype
        init = initial_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    y = causal_conv1d_fn(
        x,
        weight.to(x.dtype),
        bias.to(x.dtype) if bias is not None else None,
        seq_idx=seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None,
        initial_states=init,
        activation=activation,
    )
    return y, conv_final_state(x, initial_state, weight.shape[1])


_CONV.register("triton", _triton, _triton_available)
_CONV.register("causal_conv1d", _causal_conv1d, _causal_conv1d_available)


def causal_conv1d(x, weight, bias=None, activation="silu", initial_state=None, seq_idx=None, backend=None):
    fn = _CONV.choose(backend, x, weight, bias, activation, initial_state, seq_idx)
    return fn(x, weight, bias, activation, initial_state, seq_idx)
