"""The SSM decode steps at the paper's shapes: how close the fused state updates come to the bandwidth.

    python -m ablate.bench.decode_steps [--batch 128]

One row per distinct SSM layer of the Table 1 / Table 3 variants at paper scale: the Mamba2 state
update (``ssd_state_update``) or Mamba's (``selective_state_update``), Triton vs the PyTorch reference,
bf16 state as the benchmark's cache holds it. Median ms (CUDA events after warm-up, L2 flushed,
``ablate.bench.kernels.time_ms``); GB/s counts the state read and written once plus the step's inputs
and output, % of the 3.0 TB/s the H100 measured. Launch configurations come from the environment
(``ABLATE_SSD_UPDATE_CONFIG="BLOCK_P,warps"``, ``ABLATE_CONV_STEP_CONFIG="BLOCK_C,warps"`` for the conv
step, timed after the state updates), so a shell loop sweeps them.
"""

from __future__ import annotations

import os

import torch
import typer

from ablate.bench.kernels import HBM_BYTES_PER_S, time_ms


def ssm_shapes() -> dict[tuple, list[str]]:
    """(kind, heads or channels, head_dim, d_state, groups) -> the variants with such a layer."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple, list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        if not c.has_ssm:
            continue
        if c.ssm_type == "mamba2":
            key = ("mamba2", c.ssm_num_heads, c.ssm_head_dim, c.ssm_state_size, c.ssm_n_groups)
        else:
            key = ("mamba", c.ssm_inner_size, 1, c.ssm_state_size, 1)
        shapes.setdefault(key, []).append(name)
    return shapes


def mixer_shapes() -> dict[tuple, list[str]]:
    """(kind, heads or channels, head_dim, d_state, groups, conv taps, dt rank, dt/B/C norms) -> variants."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple, list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        if c.has_ssm:
            heads = c.ssm_num_heads if c.ssm_type == "mamba2" else c.ssm_inner_size
            head_dim, groups = (c.ssm_head_dim, c.ssm_n_groups) if c.ssm_type == "mamba2" else (1, 1)
            key = (c.ssm_type, heads, head_dim, c.ssm_state_size, groups, c.ssm_conv_kernel, c.resolved_dt_rank, c.ssm_dt_bc_norm)
            shapes.setdefault(key, []).append(name)
    return shapes


def mixer_step_inputs(shape: tuple, batch: int, device):
    """(the fused step op, its arguments, bytes it must move) for one SSM mixer's decode step, with
    parameters at their usual scales."""
    from ablate.model.ssm import mamba2_step, mamba_step

    kind, h, p, n, g, taps, rank, norms = shape
    bf = dict(device=device, dtype=torch.bfloat16)
    if kind == "mamba2":
        inner = h * p
        conv_dim = inner + 2 * g * n
        conv, state = torch.randn(batch, conv_dim, taps - 1, **bf), torch.randn(batch, h, p, n, **bf)
        args = (torch.randn(batch, inner + conv_dim + h, **bf), conv, state, torch.randn(conv_dim, taps, **bf) * taps**-0.5,
                torch.randn(conv_dim, **bf), torch.randn(h, **bf), torch.rand(h, **bf) * 2, torch.randn(h, **bf),
                torch.ones(inner, **bf), g, 1e-5)
        io = 2 * (state.numel() + conv.numel()) * 2 + batch * (2 * inner + conv_dim + h) * 2
        return mamba2_step, args, io
    state = torch.randn(batch, h, n, **bf)
    args = (torch.randn(batch, h, **bf), torch.randn(batch, rank + 2 * n, **bf), torch.randn(batch, h, **bf), state,
            torch.randn(h, rank, **bf) * rank**-0.5, torch.randn(h, **bf), torch.rand(h, n, device=device) * 2,
            torch.randn(h, **bf), tuple(torch.ones(w, **bf) for w in (rank, n, n)) if norms else None, 1e-5)
    io = 2 * state.numel() * 2 + 3 * batch * h * 2 + h * rank * 2
    return mamba_step, args, io


def conv_shapes() -> dict[tuple[int, int], list[str]]:
    """(conv channels, taps) -> the variants whose SSM layers have such a conv."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple[int, int], list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        if c.has_ssm:
            channels = c.ssm_inner_size + (2 * c.ssm_n_groups * c.ssm_state_size if c.ssm_type == "mamba2" else 0)
            shapes.setdefault((channels, c.ssm_conv_kernel), []).append(name)
    return shapes


def step_inputs(shape: tuple, batch: int, device):
    from ablate.model.decode import selective_state_update, ssd_state_update

    kind, h, p, n, g = shape
    bf = dict(device=device, dtype=torch.bfloat16)
    if kind == "mamba2":
        state = torch.randn(batch, h, p, n, **bf)
        args = (state, torch.randn(batch, h, p, **bf), torch.rand(batch, h, device=device), -torch.rand(h, device=device),
                torch.randn(batch, g, n, **bf), torch.randn(batch, g, n, **bf), torch.randn(h, device=device))
        io = 2 * state.numel() * 2 + 2 * batch * h * p * 2 + 2 * batch * g * n * 2
        return ssd_state_update, args, io
    state = torch.randn(batch, h, n, **bf)
    args = (state, torch.randn(batch, h, **bf), torch.randn(batch, h, **bf), -torch.rand(h, n, device=device),
            torch.randn(batch, n, **bf), torch.randn(batch, n, **bf), torch.randn(h, device=device), torch.randn(batch, h, **bf),
            torch.randn(h, device=device))
    io = 2 * state.numel() * 2 + 4 * batch * h * 2 + 2 * batch * n * 2
    return selective_state_update, args, io


def main(batch: int = typer.Option(128, "--batch", help="sequences per decode step (the paper's protocol)")):
    """Time the fused SSM state updates at every SSM shape of the paper-scale variants."""
    if not torch.cuda.is_available():
        raise typer.BadParameter("needs a CUDA device (CPU parity: tests/test_cache.py)")
    from ablate.model.decode import conv_step
    from ablate.model.elementwise import fused_elementwise

    config = os.environ.get("ABLATE_SSD_UPDATE_CONFIG", "default")
    print(f"batch {batch}, ABLATE_SSD_UPDATE_CONFIG={config}")
    print("| op | heads x head dim x state (groups) | reference ms | Triton ms | Triton % of 3 TB/s | variants |")
    print("|---|---|---|---|---|---|")
    for shape, variants in ssm_shapes().items():
        fn, args, io = step_inputs(shape, batch, torch.device("cuda"))
        ms = {impl: time_ms(lambda: fn(*args, backend=impl)) for impl in ("reference", "triton")}
        kind, h, p, n, g = shape
        print(f"| {kind} | {h} x {p} x {n} ({g}) | {ms['reference']:.3f} | {ms['triton']:.3f} | "
              f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {', '.join(variants)} |")
    print("\nwhole mixer steps between the projections: the fused kernel vs the ops it replaces (each on its own fast"
          " path, elementwise functions compiled); max |difference| over max |value|, output and state, from the same state")
    print("| mixer | shape | separate ops ms | fused ms | fused % of 3 TB/s | output diff | state diff | variants |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, variants in mixer_shapes().items():
        fn, args, io = mixer_step_inputs(shape, batch, torch.device("cuda"))
        with fused_elementwise():
            ms = {impl: time_ms(lambda: fn(*args, backend=impl)) for impl in ("reference", "triton")}
            diffs = _parity(fn, args, 3 if shape[0] == "mamba" else 2)
        print(f"| {shape[0]} | {' x '.join(map(str, shape[1:5]))} | {ms['reference']:.3f} | {ms['triton']:.3f} | "
              f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {diffs[0]:.1e} | {diffs[1]:.1e} | {', '.join(variants)} |")
    print(f"\nconv step, ABLATE_CONV_STEP_CONFIG={os.environ.get('ABLATE_CONV_STEP_CONFIG', 'default')}")
    print("| channels x taps | reference ms | Triton ms | Triton % of 3 TB/s | variants |")
    print("|---|---|---|---|---|")
    for (channels, taps), variants in conv_shapes().items():
        bf = dict(device="cuda", dtype=torch.bfloat16)
        state, x = torch.randn(batch, channels, taps - 1, **bf), torch.randn(batch, channels, **bf)
        args = (x, state, torch.randn(channels, taps, **bf), torch.randn(channels, **bf))
        io = (2 * state.numel() + 2 * x.numel() + channels * (taps + 1)) * 2
        ms = {impl: time_ms(lambda: conv_step(*args, backend=impl)) for impl in ("reference", "triton")}
        print(f"| {channels} x {taps} | {ms['reference']:.3f} | {ms['triton']:.3f} | "
              f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {', '.join(variants)} |")



def _parity(fn, args, state_index: int) -> tuple[float, float]:
    """Both paths once from the same state: max |difference| / max |value| of output and new state."""
    results = []
    for impl in ("reference", "triton"):
        run = [a.clone() if torch.is_tensor(a) else a for a in args]
        results.append((fn(*run, backend=impl).float(), run[state_index].float()))
    (y_ref, s_ref), (y, s) = results
    return ((y - y_ref).abs().max() / y_ref.abs().max()).item(), ((s - s_ref).abs().max() / s_ref.abs().max()).item()


if __name__ == "__main__":
    typer.run(main)
