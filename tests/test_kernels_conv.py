"""Triton causal depthwise conv1d vs its reference, on CPU through Triton's interpreter. The GPU
parity run is `python -m ablate.bench.kernels --parity`."""

from __future__ import annotations

import pytest
import torch

from ablate.bench.kernels import poisoned_allocations, rel_err
from ablate.kernels.conv import causal_conv1d
from kernel_support import assert_compiles_like_eager, use_interpreter

triton = pytest.importorskip("triton", reason="the Triton fast path needs triton installed")

KERNEL_MODULE = "ablate.kernels.triton.conv1d"


@pytest.fixture
def interpreted(monkeypatch):
    """The Triton path on CPU; 8-position tiles so short lengths span several tiles (the backward's
    tiles overlap by k-1 and several programs split the weight-gradient sum)."""
    use_interpreter(monkeypatch, KERNEL_MODULE, "_conv_fwd_kernel", ABLATE_CONV_FWD_CONFIG="16,8,2", ABLATE_CONV_BWD_CONFIG="16,8,2")


def _inputs(b, c, l, k, *, layout="model", init=False, docs=False, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(torch.bfloat16).double()
    x = rnd(b, l, c).transpose(1, 2) if layout == "model" else rnd(b, c, l)
    w = rnd(c, k) * 0.5
    bb = rnd(c) if bias else None
    state = rnd(b, c, k - 1) if init else None
    seq = torch.sort(torch.randint(0, 3, (b, l), generator=g), dim=1).values if docs else None
    return x, w, bb, state, seq


def _run(inputs, activation, dtype, backend):
    x, w, bb, state, seq = inputs
    leaves = [t.to(dtype).requires_grad_() if t is not None else None for t in (x, w, bb, state)]
    y, final = causal_conv1d(leaves[0], leaves[1], leaves[2], activation, leaves[3], seq, backend=backend)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gf = torch.randn(final.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad([y, final], [t for t in leaves if t is not None], [gy.to(y.dtype), gf.to(final.dtype)])
    return y, final, grads


def _check(inputs, dtype, tol, activation="silu"):
    with poisoned_allocations():
        y, final, grads = _run(inputs, activation, dtype, "triton")
    y_ref, final_ref, grads_ref = _run(inputs, activation, torch.float64, "reference")
    assert y.dtype == dtype and final.shape == final_ref.shape
    errors = {"y": rel_err(y, y_ref), "final_state": rel_err(final, final_ref)}
    errors.update({f"grad{i}": rel_err(a, b) for i, (a, b) in enumerate(zip(grads, grads_ref))})
    assert max(errors.values()) < tol, errors
    return y


@pytest.mark.parametrize("length,width", [(1, 4), (2, 4), (37, 4), (37, 2)])
def test_conv_matches_reference_fp32(interpreted, length, width):
    # 37 positions: 5 forward tiles, 8 backward tiles (5 owned positions each at k=4); lengths below
    # k-1 take part of the final state from the (zero) initial state
    _check(_inputs(1, 20, length, width), torch.float32, 1e-5)


@pytest.mark.parametrize("length", [2, 29])
def test_conv_initial_state_and_documents(interpreted, length):
    # taps never cross a document start; the initial state counts as the first document's and
    # takes the gradient of the first k-1 outputs (and of the final state when length < k-1)
    _check(_inputs(2, 10, length, 4, init=True, docs=True, seed=3), torch.float32, 1e-5)


def test_conv_no_bias_no_activation_wide_kernel(interpreted, monkeypatch):
    monkeypatch.setenv("ABLATE_CONV_BWD_CONFIG", "16,16,2")  # 16-position tiles own 10 positions at k=7
    _check(_inputs(1, 18, 23, 7, bias=False, init=True, seed=5), torch.float32, 1e-5, activation=None)


def test_conv_contiguous_layout(interpreted):
    _check(_inputs(1, 20, 21, 3, layout="contiguous", docs=True, seed=7), torch.float32, 1e-5)


def test_conv_bf16(interpreted):
    y = _check(_inputs(1, 20, 19, 4, init=True, docs=True, seed=9), torch.bfloat16, 1e-2)
    assert y.transpose(1, 2).is_contiguous()  # keeps x's (b, l, c) storage


def test_conv_rejects_unknown_activation(interpreted):
    x, w, bb, _, _ = _inputs(1, 4, 5, 4)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x.float(), w.float(), bb.float(), "gelu", backend="triton")


def test_conv_dispatch(monkeypatch):
    from ablate.kernels.backend import OPS

    x, w, bb, _, _ = _inputs(1, 4, 5, 4)
    args = (x.float(), w.float(), bb.float(), "silu", None, None)
    op = OPS["conv1d"]
    monkeypatch.delenv("ABLATE_TRITON_ON_CPU", raising=False)
    monkeypatch.delenv("ABLATE_CONV1D_BACKEND", raising=False)
    assert op.choose(None, *args) is op.reference
    monkeypatch.setenv("ABLATE_TRITON_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert op.choose(None, *args) is op.fast_paths["triton"][0]
    wide = (x.float(), torch.randn(4, 9), None, "silu", None, None)
    assert op.choose(None, *wide) is op.reference  # more taps than the kernel unrolls


def test_conv_compiles_into_one_graph_with_its_backward(interpreted):
    """The fast path is a torch custom op: torch.compile takes it whole (fullgraph: no break) with
    eager-equal outputs and gradients; opcheck validates its fake and autograd registrations."""
    from ablate.kernels.triton.conv1d import _conv_op

    x, w, bb, state, seq = (t.float() if t is not None and t.is_floating_point() else t for t in _inputs(2, 20, 19, 4, init=True, docs=True))

    def loss(x, w, bb, state):
        y, final = causal_conv1d(x, w, bb, "silu", state, seq, backend="triton")
        return (y * torch.arange(y.shape[-1])).sum() + final.square().sum()

    assert_compiles_like_eager(loss, [x, w, bb, state])
    op_args = (x.clone().requires_grad_(), w.clone().requires_grad_(), bb, True, state.clone().requires_grad_(), seq)
    torch.library.opcheck(_conv_op, op_args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
