"""The Mamba2 SSD fast paths against the sequential recurrence (float64): forward, final state and
every gradient, at odd lengths, lengths that are not a multiple of the chunk, chunks smaller than a
Triton block, with an initial state, packed documents (seq_idx), B/C groups, and without D.

On a CPU machine the Triton kernels run under triton's interpreter (TRITON_INTERPRET=1, set here
by tests/conftest.py before triton is imported), so the shapes stay tiny."""

import math

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton SSD path is optional")

from ablate.kernels import ssd_scan, ssd_scan_sequential_ref  # noqa: E402
from ablate.kernels.ssd import _SSD  # noqa: E402
from ablate.kernels.triton.ssd import ssd_scan_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _inputs(b, l, h, p, g, n, dtype, init, docs, with_d):
    x = torch.randn(b, l, h, p, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, l, h) - 1.0)  # fp32, as the model passes it
    # A as the model initialises it (-1 .. -16): strong decays, where a decay gradient formed as a
    # difference of two large sums loses every digit in bf16
    A = -torch.exp(torch.rand(h) * math.log(16))
    B = torch.randn(b, l, g, n, dtype=dtype)
    C = torch.randn(b, l, g, n, dtype=dtype)
    D = torch.randn(h) if with_d else None
    s0 = torch.randn(b, h, p, n) if init else None
    seq = None
    if docs:
        seq = (torch.rand(b, l) < 0.12).long().cumsum(1) + 3  # need not start at 0
    ins = [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, dt, A, B, C, D, s0)]
    return ins, (seq.to(DEVICE) if seq is not None else None)


def _check(b, l, h, p, g, n, chunk, dtype=torch.float32, init=True, docs=True, with_d=True, final_grad=True, tol=1e-4):
    ins, seq = _inputs(b, l, h, p, g, n, dtype, init, docs, with_d)
    ref_in = [t.detach().double().requires_grad_() if t is not None else None for t in ins]
    # poison: the op allocates its outputs; a NaN would show through any element it failed to write
    y, final = ssd_scan_triton(*ins, chunk, seq)
    y_ref, final_ref = ssd_scan_sequential_ref(*ref_in, seq)
    assert y.dtype == dtype and y.shape == y_ref.shape and final.shape == final_ref.shape
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    assert _rel(y, y_ref) < tol, "y"
    assert _rel(final, final_ref) < tol, "final state"
    gy = torch.randn_like(y_ref)
    gf = torch.randn_like(final_ref) if final_grad else torch.zeros_like(final_ref)
    loss = (y.double() * gy).sum() + ((final.double() * gf).sum() if final_grad else 0)
    loss.backward()
    ((y_ref * gy).sum() + (final_ref * gf).sum()).backward()
    for name, t, r in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], ins, ref_in):
        if t is None:
            continue
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert _rel(t.grad, r.grad) < tol, name


@pytest.mark.parametrize(
    "b,l,h,p,g,n,chunk",
    [
        (2, 37, 4, 8, 2, 8, 16),  # odd length, 3 chunks, the last partial; 2 heads per group
        (1, 21, 2, 12, 1, 10, 8),  # chunk smaller than a block; head dim and state not powers of 2
        (2, 70, 2, 16, 1, 16, 32),  # 3 chunks of 32, the last one 6 long
        (1, 1, 2, 8, 1, 8, 16),  # one step (a decode step with a cache)
    ],
)
def test_triton_ssd_fp32_matches_recurrence(b, l, h, p, g, n, chunk):
    _check(b, l, h, p, g, n, chunk)


def test_triton_ssd_without_state_documents_or_skip():
    _check(2, 32, 4, 8, 1, 8, 16, init=False, docs=False, with_d=False)


def test_triton_ssd_gradient_of_outputs_only():
    # the final state unused: its gradient arrives as None / zeros
    _check(1, 29, 2, 8, 1, 8, 16, final_grad=False)


def test_triton_ssd_bf16_within_bf16_tolerance():
    _check(2, 37, 4, 8, 2, 8, 16, dtype=torch.bfloat16, tol=1e-2)


def test_triton_ssd_documents_do_not_leak_state():
    # a change in document 0 must not move any output of document 1
    b, l, h, p, n = 1, 40, 2, 8, 8
    ins, _ = _inputs(b, l, h, p, 1, n, torch.float32, False, False, True)
    seq = torch.zeros(b, l, dtype=torch.long, device=DEVICE)
    seq[:, 19:] = 1  # document 1 starts inside the second chunk of 16
    with torch.no_grad():
        y1, _ = ssd_scan_triton(*ins, 16, seq)
        ins[0][:, :19] += 1.0
        y2, _ = ssd_scan_triton(*ins, 16, seq)
    moved = (y1 - y2).abs().amax((0, 2, 3))
    assert (moved[:19] > 0).all() and (moved[19:] == 0).all()


def test_auto_choice_takes_triton_only_where_available(monkeypatch):
    ins, seq = _inputs(1, 8, 2, 8, 1, 8, torch.float32, False, False, True)
    args = (*ins, 16, seq)
    if DEVICE == "cpu":
        monkeypatch.delenv("ABLATE_TRITON_ON_CPU", raising=False)
        assert _SSD.choose(None, *args) is _SSD.reference
        monkeypatch.setenv("ABLATE_TRITON_ON_CPU", "1")
    assert _SSD.choose(None, *args) is _SSD.fast_paths["triton"][0]
    y, _ = ssd_scan(*args)
    y_ref, _ = ssd_scan(*args, backend="reference")
    assert _rel(y, y_ref) < 1e-5


def test_mamba2_model_trains_the_same_through_triton(monkeypatch):
    """The model's Mamba2 layers, packed documents included: loss and every parameter gradient match
    between the reference and the Triton path (through the custom op)."""
    from ablate.registry import build_model, resolve

    monkeypatch.setenv("ABLATE_TRITON_ON_CPU", "1")
    variant = resolve("table3-mamba2", "tiny", overrides={"num_hidden_layers": 1})
    model = build_model(variant).to(DEVICE)
    ids = torch.randint(0, variant.config.vocab_size, (1, 19), device=DEVICE)
    seq = torch.cat([torch.zeros(1, 7), torch.ones(1, 12)], 1).long().to(DEVICE)

    def run(backend):
        monkeypatch.setenv("ABLATE_SSD_BACKEND", backend)
        model.zero_grad()
        out = model(input_ids=ids, labels=ids, seq_idx=seq)
        out.loss.backward()
        return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    loss_ref, grads_ref = run("reference")
    loss_tri, grads_tri = run("triton")
    assert torch.allclose(loss_ref, loss_tri, rtol=1e-5)
    assert grads_ref.keys() == grads_tri.keys()
    for k in grads_ref:
        assert _rel(grads_tri[k], grads_ref[k]) < 1e-4, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba-ssm needs CUDA")
def test_mamba_ssm_matches_recurrence_when_installed():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    ins, seq = _inputs(2, 100, 4, 64, 1, 16, torch.float32, True, False, True)
    y, final = ssd_scan(*ins, 64, seq, backend="mamba_ssm")
    y_ref, final_ref = ssd_scan_sequential_ref(*[t.detach().double() for t in ins], seq)
    assert _rel(y, y_ref) < 1e-3 and _rel(final, final_ref) < 1e-3
