"""Triton selective scan vs its reference, on CPU through Triton's interpreter (tiny shapes: the
interpreter runs every scan element in Python). The GPU parity run is `python -m ablate.bench.kernels
--parity`."""

from __future__ import annotations

import pytest
import torch

from ablate.bench.kernels import poisoned_allocations, rel_err
from ablate.kernels.selective_scan import selective_scan
from kernel_support import assert_compiles_like_eager, use_interpreter

triton = pytest.importorskip("triton", reason="the Triton fast path needs triton installed")

KERNEL_MODULE = "ablate.kernels.triton.selective_scan"


@pytest.fixture
def interpreted(monkeypatch):
    """The Triton path on CPU, with launch configurations small enough that the tests' lengths span
    several chunks (T=8) and channels span several programs."""
    use_interpreter(monkeypatch, KERNEL_MODULE, "_scan_fwd_kernel", ABLATE_SCAN_FWD_CONFIG="8,8,2", ABLATE_SCAN_BWD_CONFIG="8,2,0")


def _inputs(b, d, n, l, *, layout="model", h0=False, docs=False, full=True, seed=0):
    """fp64 inputs on the bf16 grid (so every dtype sees the same values). layout "model" passes
    (b, d, l) views of (b, l, d) storage, as ablate/model/ssm.py does."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(torch.bfloat16).double()

    def seq_major(*s):  # (b, x, l)
        return rnd(s[0], s[2], s[1]).transpose(1, 2) if layout == "model" else rnd(*s)

    u, z = seq_major(b, d, l), seq_major(b, d, l)
    delta = seq_major(b, d, l) * 0.5 - 1.0
    B, C = seq_major(b, n, l), seq_major(b, n, l)
    A = -(torch.rand(d, n, generator=g, dtype=torch.float64) * 3 + 0.1).to(torch.bfloat16).double()
    D, bias = rnd(d), rnd(d) * 0.5
    init = rnd(b, d, n) if h0 else None
    seq = torch.sort(torch.randint(0, 3, (b, l), generator=g), dim=1).values if docs else None
    if not full:
        D = z = bias = None
    return [u, delta, A, B, C, D, z, bias, full, init, seq]


def _run(args, dtype, backend):
    """Outputs and the gradients of every float input, for cotangents on y and the final state."""
    args = list(args)
    leaves = []
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 9):
        if args[i] is not None:
            # A stays fp32 in a bf16 run, as the model passes it
            args[i] = args[i].to(torch.float32 if (i == 2 and dtype == torch.bfloat16) else dtype).requires_grad_()
            leaves.append(args[i])
    y, h = selective_scan(*args, backend=backend)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad([y, h], leaves, [gy.to(y.dtype), gh.to(h.dtype)])
    return y, h, grads


def _check(args, dtype, tol):
    with poisoned_allocations():  # an element the kernels leave unwritten comes back NaN
        y, h, grads = _run(args, dtype, "triton")
    y_ref, h_ref, grads_ref = _run(args, torch.float64, "reference")
    assert y.dtype == dtype and h.dtype == torch.float32
    errors = {"y": rel_err(y, y_ref), "state": rel_err(h, h_ref)}
    errors.update({f"grad{i}": rel_err(a, b) for i, (a, b) in enumerate(zip(grads, grads_ref))})
    assert max(errors.values()) < tol, errors
    return y


@pytest.mark.parametrize("length", [1, 19, 37])
def test_scan_matches_reference_fp32(interpreted, length):
    # 37: four full chunks of 8 and a partial one; d=10 leaves a partial channel block; n=3 pads
    # the state block to 4
    _check(_inputs(1, 10, 3, length), torch.float32, 1e-5)


@pytest.mark.parametrize("length", [1, 29])
def test_scan_initial_state_and_documents(interpreted, length):
    # the state restarts at every document boundary, the initial state carries into the first
    # document, and both the initial state and the final state take gradients
    _check(_inputs(2, 6, 3, length, h0=True, docs=True, seed=3), torch.float32, 1e-5)


@pytest.mark.parametrize("segments", [2, 5])
def test_scan_split_sequence(interpreted, monkeypatch, segments):
    # the forward in segments (final state of each from zero, then the state entering each, then
    # all in parallel); documents and the initial state cross segment boundaries
    monkeypatch.setenv("ABLATE_SCAN_SEGMENTS", str(segments))
    _check(_inputs(1, 6, 3, 37, h0=True, docs=True, seed=13), torch.float32, 1e-5)


def test_scan_without_gate_skip_bias_softplus(interpreted):
    _check(_inputs(1, 9, 4, 21, full=False, h0=True, seed=5), torch.float32, 1e-5)


def test_scan_contiguous_layout(interpreted):
    _check(_inputs(1, 10, 3, 23, layout="contiguous", docs=True, seed=7), torch.float32, 1e-5)


def test_scan_bf16(interpreted):
    y = _check(_inputs(1, 10, 3, 19, h0=True, docs=True, seed=9), torch.bfloat16, 1e-2)
    # the output keeps u's (b, l, d) storage, so the model's transpose back is free
    assert y.transpose(1, 2).is_contiguous()


def test_scan_channel_sum_on_tensor_cores(interpreted, monkeypatch):
    # the backward's tl.dot reduction over channels (used on GPU when n and BLOCK_D are >= 16)
    monkeypatch.setenv("ABLATE_SCAN_FWD_CONFIG", "16,8,4")
    monkeypatch.setenv("ABLATE_SCAN_BWD_CONFIG", "16,4,1")
    from ablate.kernels.triton.selective_scan import bwd_config

    assert bwd_config(16, 8)[2]
    _check(_inputs(1, 16, 16, 9, h0=True, seed=11), torch.float32, 1e-5)


def test_scan_dispatch(monkeypatch):
    from ablate.kernels.backend import OPS

    args = _inputs(1, 4, 2, 3)
    args32 = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    op = OPS["selective_scan"]
    monkeypatch.delenv("ABLATE_TRITON_ON_CPU", raising=False)
    monkeypatch.delenv("ABLATE_SELECTIVE_SCAN_BACKEND", raising=False)
    assert op.choose(None, *args32) is op.reference  # CPU without the opt-in: the reference
    monkeypatch.setenv("ABLATE_TRITON_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert op.choose(None, *args32) is op.fast_paths["triton"][0]
    assert op.choose(None, *args) is op.reference  # fp64 stays on the reference
    monkeypatch.setenv("ABLATE_SELECTIVE_SCAN_BACKEND", "reference")
    assert op.choose(None, *args32) is op.reference


def test_scan_compiles_into_one_graph_with_its_backward(interpreted):
    """The fast path is a torch custom op: torch.compile takes it whole (fullgraph: no break) and the
    compiled forward and gradients equal the eager ones; opcheck validates its fake and autograd
    registrations against the real kernels."""
    from ablate.kernels.triton.selective_scan import _scan_op

    args = _inputs(2, 10, 3, 19, h0=True, docs=True)
    args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]

    def loss(*a):
        y, h = selective_scan(*a, backend="triton")
        return (y * torch.arange(y.shape[-1])).sum() + h.square().sum()

    assert_compiles_like_eager(loss, args)
    op_args = [a.clone().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args] + [True]
    torch.library.opcheck(_scan_op, tuple(op_args), test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
