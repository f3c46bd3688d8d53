"""The fused decode steps at the paper's shapes: how close the SSM state updates (and the FFN's gate) come to the bandwidth.

    python -m ablate.bench.decode_steps [--batch 128]

One row per distinct SSM layer of the Table 1 / Table 3 variants at paper scale: the Mamba2 state
update (``ssd_state_update``) or Mamba's (``selective_state_update``), Triton vs the PyTorch reference,
bf16 state as the benchmark's cache holds it. Median ms (CUDA events after warm-up, L2 flushed,
``ablate.bench.kernels.time_ms``); GB/s counts the state read and written once plus the step's inputs
and output, % of the 3.0 TB/s the H100 measured. Launch configurations come from the environment
(``ABLATE_SSD_UPDATE_CONFIG="BLOCK_P,warps"``, ``ABLATE_CONV_STEP_CONFIG="BLOCK_C,warps"`` for the conv
step, ``ABLATE_MAMBA_STEP_CONFIG="BLOCK_B,BLOCK_D,warps"`` for the fused Mamba step), so a shell loop
sweeps them. The fused Mamba step (``mamba_step``: dt/B/C norms, dt's projection, decay and update in
one kernel) is timed against the ops it replaces and checked against them at the paper's shapes. The
conv step is timed with its state tap-major, as the cache stores it, and channel-major. The FFN's
gate/up projection with its SiLU gate in one kernel (``gate_up_silu``) is timed against cuBLAS and
the compiled gate, ``ABLATE_GATE_UP_CONFIG="BM,BK,stages,warps"`` for its launch; ``--only ffn``
runs that section alone, ``--configs "A;B"`` sweeps its launch in one process.
"""

from __future__ import annotations

import os

import torch
import typer

from ablate.bench.kernels import HBM_BYTES_PER_S, time_ms


def _shapes_of_ssm_layers(key) -> dict[tuple, list[str]]:
    """key(config) -> the variants of the paper suite (paper scale) with SSM layers, grouped by key;
    a key of None leaves the variant out."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple, list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        if c.has_ssm and (k := key(c)) is not None:
            shapes.setdefault(k, []).append(name)
    return shapes


def ssm_shapes() -> dict[tuple, list[str]]:
    """(kind, heads or channels, head_dim, d_state, groups) -> the variants with such a layer."""
    return _shapes_of_ssm_layers(
        lambda c: ("mamba2", c.ssm_num_heads, c.ssm_head_dim, c.ssm_state_size, c.ssm_n_groups)
        if c.ssm_type == "mamba2"
        else ("mamba", c.ssm_inner_size, 1, c.ssm_state_size, 1)
    )


def mamba_step_shapes() -> dict[tuple, list[str]]:
    """(channels, d_state, dt rank, dt/B/C norms) -> the variants whose Mamba layers have that shape."""
    return _shapes_of_ssm_layers(
        lambda c: (c.ssm_inner_size, c.ssm_state_size, c.resolved_dt_rank, c.ssm_dt_bc_norm) if c.ssm_type == "mamba" else None
    )


def mamba_step_inputs(shape: tuple, batch: int, device):
    """The arguments of ``mamba_step`` at one shape, parameters at their usual scales, and the bytes
    the step must move (state read and written, inputs, output, dt_proj's weight)."""
    channels, n, rank, norms = shape
    bf = dict(device=device, dtype=torch.bfloat16)
    state = torch.randn(batch, channels, n, **bf)
    args = (torch.randn(batch, channels, **bf), torch.randn(batch, rank + 2 * n, **bf), torch.randn(batch, channels, **bf), state,
            torch.randn(channels, rank, **bf) * rank**-0.5, torch.randn(channels, **bf), torch.rand(channels, n, device=device) * 2,
            torch.randn(channels, **bf), tuple(torch.ones(w, **bf) for w in (rank, n, n)) if norms else None, 1e-5)
    io = 2 * state.numel() * 2 + 3 * batch * channels * 2 + channels * rank * 2
    return args, io


def conv_shapes() -> dict[tuple[int, int], list[str]]:
    """(conv channels, taps) -> the variants whose SSM layers have such a conv."""
    return _shapes_of_ssm_layers(lambda c: (c.ssm_conv_channels, c.ssm_conv_kernel))


def step_inputs(shape: tuple, batch: int, device):
    from ablate.model.decode import selective_state_update, ssd_state_update

    kind, h, p, n, g = shape
    bf = dict(device=device, dtype=torch.bfloat16)
    if kind == "mamba2":
        state = torch.randn(batch, h, p, n, **bf)
        args = (state, torch.randn(batch, h, p, **bf), torch.rand(batch, h, device=device), torch.randn(h, device=device),
                torch.randn(batch, g, n, **bf), torch.randn(batch, g, n, **bf), torch.randn(h, device=device))
        io = 2 * state.numel() * 2 + 2 * batch * h * p * 2 + 2 * batch * g * n * 2
        return ssd_state_update, args, io
    state = torch.randn(batch, h, n, **bf)
    args = (state, torch.randn(batch, h, **bf), torch.randn(batch, h, **bf), -torch.rand(h, n, device=device),
            torch.randn(batch, n, **bf), torch.randn(batch, n, **bf), torch.randn(h, device=device), torch.randn(batch, h, **bf),
            torch.randn(h, device=device))
    io = 2 * state.numel() * 2 + 4 * batch * h * 2 + 2 * batch * n * 2
    return selective_state_update, args, io


SWEPT = {"ffn": ("ABLATE_GATE_UP_CONFIG", lambda batch: _gate_up_section(batch))}


def main(
    batch: int = typer.Option(128, "--batch", help="sequences per decode step (the paper's protocol)"),
    only: str = typer.Option("", "--only", help="one section alone: ffn"),
    configs: str = typer.Option("", "--configs", help='with --only: launch configurations swept, "BM,BK,stages,warps;..."'),
):
    """Time the fused decode steps at every SSM and FFN shape of the paper-scale variants."""
    if not torch.cuda.is_available():
        raise typer.BadParameter("needs a CUDA device (CPU parity: tests/test_cache.py)")
    if only:
        if only not in SWEPT:
            raise typer.BadParameter(f"unknown section {only!r}; known: {', '.join(SWEPT)}", param_hint="--only")
        var, section = SWEPT[only]
        for config in configs.split(";") if configs else [os.environ.get(var, "")]:
            if config:
                os.environ[var] = config
            try:
                section(batch)
            except Exception as e:  # noqa: BLE001 - a sweep goes on past a configuration that does not fit
                print(f"<!-- {config}: {type(e).__name__}: {str(e)[:160]} -->")
        return
    from ablate.model.decode import conv_step
    from ablate.model.elementwise import fused_elementwise
    from ablate.model.ssm import mamba_step

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
    print(f"\nMamba step after x_proj, ABLATE_MAMBA_STEP_CONFIG={os.environ.get('ABLATE_MAMBA_STEP_CONFIG', 'default')}: "
          "the fused kernel vs the ops it replaces (dt/B/C norms, dt_proj, decay, state update, each on its fast path),\n"
          "timed as CUDA-graph replays over copies of the state larger than L2, as a model's layers run it; max |difference| over max |value| of the\n"
          "output and the new state, both paths from the same state")
    print("| channels x state, dt rank, norms | separate ops ms | fused ms | fused % of 3 TB/s | output diff | state diff | variants |")
    print("|---|---|---|---|---|---|---|")
    for shape, variants in mamba_step_shapes().items():
        args, io = mamba_step_inputs(shape, batch, torch.device("cuda"))
        with fused_elementwise():
            ms = {impl: layers_ms(mamba_step, args, 3, impl) for impl in ("reference", "triton")}
            diffs = _parity(args)
        print(f"| {shape[0]} x {shape[1]}, {shape[2]}, {'yes' if shape[3] else 'no'} | {ms['reference']:.4f} | {ms['triton']:.4f} | "
              f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {diffs[0]:.1e} | {diffs[1]:.1e} | {', '.join(variants)} |")
    print(f"\nconv step, ABLATE_CONV_STEP_CONFIG={os.environ.get('ABLATE_CONV_STEP_CONFIG', 'default')}: "
          "the state tap-major (as the cache stores it) or channel-major, timed as the Mamba step above")
    print("| channels x taps | state layout | reference ms | Triton ms | Triton % of 3 TB/s | variants |")
    print("|---|---|---|---|---|---|")
    for (channels, taps), variants in conv_shapes().items():
        bf = dict(device="cuda", dtype=torch.bfloat16)
        for layout in ("tap-major", "channel-major"):
            if layout == "tap-major":
                state = torch.randn(batch, taps - 1, channels, **bf).transpose(1, 2)
            else:
                state = torch.randn(batch, channels, taps - 1, **bf)
            x = torch.randn(batch, channels, **bf)
            args = (x, state, torch.randn(channels, taps, **bf), torch.randn(channels, **bf))
            io = (2 * state.numel() + 2 * x.numel() + channels * (taps + 1)) * 2
            ms = {impl: layers_ms(conv_step, args, 1, impl) for impl in ("reference", "triton")}
            print(f"| {channels} x {taps} | {layout} | {ms['reference']:.4f} | {ms['triton']:.4f} | "
                  f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {', '.join(variants)} |")
    _gate_up_section(batch)


def ffn_shapes() -> dict[tuple[int, int], list[str]]:
    """(hidden, intermediate) -> the variants of the paper suite with SwiGLU FFNs of that shape."""
    from ablate.bench.paper_suite import suite_entries
    from ablate.registry import resolve

    shapes: dict[tuple[int, int], list[str]] = {}
    for name in suite_entries(anchors=False):
        c = resolve(name, "paper").config
        if c.has_attention or c.ffn:  # every block but a bare SSM block has an FFN
            shapes.setdefault((c.hidden_size, c.intermediate_size), []).append(name)
    return shapes


def _gate_up_section(batch: int) -> None:
    from ablate.model.elementwise import fused_elementwise
    from ablate.model.layers import gate_up_silu

    print(f"\nFFN gate/up projection and SiLU gate, ABLATE_GATE_UP_CONFIG={os.environ.get('ABLATE_GATE_UP_CONFIG', 'default')}: "
          "cuBLAS + the compiled gate (reference) vs one Triton kernel, timed as CUDA-graph replays over copies\n"
          "of the weight larger than L2 (as a model's layers each bring their own); % of 3 TB/s counts the weight, the input and the output once; diff: max |difference| over max |value|")
    print("| hidden x intermediate | weight MB | reference ms | Triton ms | Triton % of 3 TB/s | diff | variants |")
    print("|---|---|---|---|---|---|---|")
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for (hidden, inter), variants in ffn_shapes().items():
        x, w = torch.randn(batch, 1, hidden, **bf), torch.randn(2 * inter, hidden, **bf) * hidden**-0.5
        io = (w.numel() + x.numel() + batch * inter) * 2
        with fused_elementwise():
            ms = {impl: layers_ms(gate_up_silu, (x, w), 1, impl) for impl in ("reference", "triton")}
            ref, got = (gate_up_silu(x, w, backend=impl).float() for impl in ("reference", "triton"))
        diff = ((got - ref).abs().max() / ref.abs().max()).item()
        print(f"| {hidden} x {inter} | {w.numel() * 2 / 1e6:.1f} | {ms['reference']:.4f} | {ms['triton']:.4f} | "
              f"{100 * io / HBM_BYTES_PER_S * 1e3 / ms['triton']:.0f}% | {diff:.1e} | {', '.join(variants)} |")


def layers_ms(fn, args, state_index: int, backend: str, l2_bytes: int = 50 * 2**20) -> float:
    """Median ms of one call of ``fn`` as a decode step runs it: replayed from a CUDA graph (no
    Python or launch gaps) over copies of the state whose sum exceeds the L2 cache, one per call, as
    the layers of a model each bring their own state from memory."""
    from triton.testing import do_bench_cudagraph

    state = args[state_index]
    copies = max(2, -(-2 * l2_bytes // (state.numel() * state.element_size())))
    # clone keeps the state's strides (a tap-major conv state stays tap-major)
    calls = [tuple(state.clone() if i == state_index else a for i, a in enumerate(args)) for _ in range(copies)]

    def step():
        for call in calls:
            fn(*call, backend=backend)

    return float(do_bench_cudagraph(step, rep=100, return_mode="median")) / copies


def _parity(args) -> tuple[float, float]:
    """Both paths once from the same state: max |difference| / max |value| of output and new state."""
    from ablate.model.ssm import mamba_step

    results = []
    for impl in ("reference", "triton"):
        run = [a.clone() if torch.is_tensor(a) else a for a in args]
        results.append((mamba_step(*run, backend=impl).float(), run[3].float()))
    (y_ref, s_ref), (y, s) = results
    return ((y - y_ref).abs().max() / y_ref.abs().max()).item(), ((s - s_ref).abs().max() / s_ref.abs().max()).item()


if __name__ == "__main__":
    typer.run(main)
