"""SSM mixers: Mamba (selective scan, diagonal A per channel) and Mamba2 (SSD, scalar decay per head).

``MambaHeads`` is the part of Mamba after the input projection (conv, dt/B/C, scan, gate): the
standalone ``MambaMixer`` wraps it in its own projections, the hybrid-head block feeds it from a
projection it shares with the attention heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import AblateConfig
from ablate.kernels import causal_conv1d, selective_scan, ssd_scan
from ablate.kernels.backend import op
from ablate.kernels.triton.support import can_run
from ablate.model.context import ForwardContext
from ablate.model.decode import conv_step, segment_rms_norm, selective_state_update, ssd_state_update
from ablate.model.elementwise import fusable
from ablate.model.layers import RMSNorm


def _mask_padding(x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    # padded positions carry zeros, so they neither enter the conv window nor drive the state
    if ctx.token_valid is None:
        return x
    return x * ctx.token_valid.unsqueeze(-1).to(x.dtype)


def _cached_state(ctx: ForwardContext, layer: int, step: bool):
    """(conv state, recurrent state): the cache's buffers for an in-place decode step, the state to
    continue from for a chunk, (None, None) without a cache."""
    if ctx.cache is None:
        return None, None
    return ctx.cache.ssm_buffers(layer) if step else ctx.cache.ssm_state(layer)


def _inverse_softplus_dt(n: int, config: AblateConfig) -> torch.Tensor:
    lo, hi = math.log(config.ssm_dt_min), math.log(config.ssm_dt_max)
    dt = torch.exp(torch.rand(n) * (hi - lo) + lo).clamp(min=config.ssm_dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class MambaHeads(nn.Module):
    """Mamba's sequence mixing on an already projected input x and gate z, both (b, l, inner)."""

    def __init__(self, config: AblateConfig, layer: int):
        super().__init__()
        self.layer = layer
        inner, n, r = config.ssm_inner_size, config.ssm_state_size, config.resolved_dt_rank
        self.inner, self.state_size, self.dt_rank = inner, n, r
        self.conv_weight = nn.Parameter(torch.empty(inner, config.ssm_conv_kernel))
        self.conv_bias = nn.Parameter(torch.zeros(inner)) if config.ssm_conv_bias else None
        self.x_proj = nn.Linear(inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, n))
        self.D = nn.Parameter(torch.empty(inner))
        if config.ssm_dt_bc_norm:
            self.dt_norm = RMSNorm(r, config.rms_norm_eps)
            self.B_norm = RMSNorm(n, config.rms_norm_eps)
            self.C_norm = RMSNorm(n, config.rms_norm_eps)
        self.dt_bc_norm = config.ssm_dt_bc_norm
        self._config = config

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real A (1..N per channel), D = 1, dt initialised log-uniform in [dt_min, dt_max]."""
        A = torch.arange(1, self.state_size + 1, dtype=torch.float32).expand(self.inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5
        self.dt_proj.weight.uniform_(-std, std)
        self.dt_proj.bias.copy_(_inverse_softplus_dt(self.inner, self._config))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        if self.conv_bias is not None:
            self.conv_bias.zero_()

    def forward(self, x: torch.Tensor, z: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        step = ctx.cache is not None and x.shape[1] == 1  # a decode step: update the cached state in place
        state = _cached_state(ctx, self.layer, step)
        x = _mask_padding(x, ctx).transpose(1, 2)  # (b, inner, l)
        if step:
            x = conv_step(x[..., 0], state[0], self.conv_weight, self.conv_bias).unsqueeze(-1)
        else:
            x, conv_state = causal_conv1d(x, self.conv_weight, self.conv_bias, "silu", state[0], ctx.seq_idx)
        x = _mask_padding(x.transpose(1, 2), ctx)  # (b, l, inner)
        dbc = self.x_proj(x)
        if step:  # the rest of the step, one kernel on GPU
            norms = (self.dt_norm.weight, self.B_norm.weight, self.C_norm.weight) if self.dt_bc_norm else None
            eps = self.dt_norm.eps if self.dt_bc_norm else 0.0
            y = mamba_step(x[:, 0], dbc[:, 0], z[:, 0], state[1], self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D, norms, eps)
            return y.unsqueeze(1)
        dt, B, C = torch.split(dbc, [self.dt_rank, self.state_size, self.state_size], dim=-1)
        if self.dt_bc_norm:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan, in fp32
        y, ssm_state = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            decay_rates(self.A_log),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D,
            z.transpose(1, 2),
            self.dt_proj.bias,
            True,
            state[1],
            ctx.seq_idx,
        )
        if ctx.cache is not None:
            ctx.cache.set_ssm_state(self.layer, conv_state, ssm_state)
        return y.transpose(1, 2)


class MambaMixer(nn.Module):
    """Mamba (v1): in_proj -> (x, z) -> MambaHeads -> out_proj."""

    def __init__(self, config: AblateConfig, layer: int):
        super().__init__()
        inner = config.ssm_inner_size
        self.in_proj = nn.Linear(config.hidden_size, 2 * inner, bias=config.ssm_bias)
        self.heads = MambaHeads(config, layer)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=config.ssm_bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        return self.out_proj(self.heads(x, z, ctx))


class GatedGroupRMSNorm(nn.Module):
    """Mamba2's output norm: RMSNorm(y * silu(z)) computed per group of channels."""

    def __init__(self, width: int, groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.groups, self.eps = groups, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_group_rms_norm(y, z, self.weight, self.groups, self.eps)


@fusable
def gated_group_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    dtype = y.dtype
    y = y.float() * F.silu(z.float())
    g = y.view(*y.shape[:-1], groups, -1)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return weight * g.view_as(y).to(dtype)


@fusable
def decay_rates(A_log: torch.Tensor) -> torch.Tensor:
    """A = -exp(A_log), in fp32."""
    return -torch.exp(A_log.float())


@fusable
def softplus_dt(dt: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.softplus(dt.float() + bias.float())


def mamba_step_ref(u, dbc, z, ssm_state, dt_weight, dt_bias, A_log, D, norms, eps: float):
    """A Mamba decode step after the conv and the x projection. u, z: (b, inner), the conv output and
    the gate; dbc: (b, r + 2n), x_proj's [dt | B | C]; norms: the RMSNorm weights of dt, B and C
    (Hymba's SSM heads) or None; ssm_state (b, inner, n) is updated in place. Returns y (b, inner)."""
    if norms is not None:
        dbc = segment_rms_norm(dbc, norms, eps)
    n = ssm_state.shape[-1]
    dt, B, C = torch.split(dbc, [dt_weight.shape[1], n, n], dim=-1)
    dt = F.linear(dt, dt_weight)  # the bias is added inside the step, in fp32
    return selective_state_update(ssm_state, u, dt, decay_rates(A_log), B, C, D, z, dt_bias)


def _mamba_step_triton(*args):
    from ablate.model.decode_triton import mamba_step_triton

    return mamba_step_triton(*args)


_MAMBA_STEP = op("mamba_step", mamba_step_ref)
_MAMBA_STEP.register("triton", _mamba_step_triton, lambda u, dbc, z, ssm, *rest: can_run(u, dbc, z, ssm))


def mamba_step(u, dbc, z, ssm_state, dt_weight, dt_bias, A_log, D, norms, eps, backend=None):
    """One Mamba decode step after the x projection, state updated in place; see ``mamba_step_ref``."""
    args = (u, dbc, z, ssm_state, dt_weight, dt_bias, A_log, D, None if norms is None else tuple(norms), eps)
    return _MAMBA_STEP.choose(backend, *args)(*args)


class Mamba2Mixer(nn.Module):
    """Mamba2: in_proj -> (z, xBC, dt); conv + SiLU on xBC; SSD scan; gated group norm; out_proj."""

    def __init__(self, config: AblateConfig, layer: int):
        super().__init__()
        self.layer = layer
        inner, n, g = config.ssm_inner_size, config.ssm_state_size, config.ssm_n_groups
        self.inner, self.state_size, self.groups = inner, n, g
        self.num_heads, self.head_dim = config.ssm_num_heads, config.ssm_head_dim
        self.chunk_size = config.ssm_chunk_size
        self.conv_dim = config.ssm_conv_channels
        self.in_proj = nn.Linear(config.hidden_size, inner + self.conv_dim + self.num_heads, bias=config.ssm_bias)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, config.ssm_conv_kernel))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim)) if config.ssm_conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = GatedGroupRMSNorm(inner, g, config.rms_norm_eps)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=config.ssm_bias)
        self._config = config

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        self.A_log.copy_(torch.log(torch.empty(self.num_heads).uniform_(1, 16)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(_inverse_softplus_dt(self.num_heads, self._config))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        if self.conv_bias is not None:
            self.conv_bias.zero_()

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, l, _ = hidden.shape
        step = ctx.cache is not None and l == 1  # a decode step: update the cached state in place
        state = _cached_state(ctx, self.layer, step)
        z, xbc, dt = torch.split(self.in_proj(_mask_padding(hidden, ctx)), [self.inner, self.conv_dim, self.num_heads], dim=-1)
        if step:
            xbc = conv_step(xbc[:, 0], state[0], self.conv_weight, self.conv_bias).unsqueeze(1)
        else:
            xbc, conv_state = causal_conv1d(xbc.transpose(1, 2), self.conv_weight, self.conv_bias, "silu", state[0], ctx.seq_idx)
            xbc = xbc.transpose(1, 2)
        xbc = _mask_padding(xbc, ctx)
        x, B, C = torch.split(xbc, [self.inner, self.groups * self.state_size, self.groups * self.state_size], dim=-1)
        if step:  # the step adds dt's bias, takes its softplus and the decay rate itself
            y = ssd_state_update(
                state[1],
                x.reshape(b, self.num_heads, self.head_dim),
                dt[:, 0],
                self.A_log,
                B.reshape(b, self.groups, self.state_size),
                C.reshape(b, self.groups, self.state_size),
                self.D,
                self.dt_bias,
                True,
            )
            return self.out_proj(self.norm(y.reshape(b, 1, self.inner), z))
        dt = softplus_dt(dt, self.dt_bias)
        y, ssm_state = ssd_scan(
            x.reshape(b, l, self.num_heads, self.head_dim),
            dt,
            decay_rates(self.A_log),
            B.reshape(b, l, self.groups, self.state_size),
            C.reshape(b, l, self.groups, self.state_size),
            self.D,
            state[1],
            self.chunk_size,
            ctx.seq_idx,
        )
        if ctx.cache is not None:
            ctx.cache.set_ssm_state(self.layer, conv_state, ssm_state)
        return self.out_proj(self.norm(y.reshape(b, l, self.inner), z))


SSM_MIXERS = {"mamba": MambaMixer, "mamba2": Mamba2Mixer}
