"""The parity runner's error measure: relative, with a floor for gradients that vanish."""

import torch

from ablate.bench.kernels import rel_err


def test_a_vanishing_gradient_is_judged_at_the_checks_scale():
    noise = torch.full((4,), 1e-18, dtype=torch.float64)  # an fp64 reference of pure rounding noise
    exact_zero = torch.zeros(4)
    assert rel_err(exact_zero, noise) == 1.0  # without a floor an exact answer "fails"
    assert rel_err(exact_zero, noise, floor=1e-2) < 1e-12
    assert rel_err(torch.full((4,), 0.5), noise, floor=1e-2) > 1.0  # real garbage still fails


def test_nan_never_passes_and_relative_error_scales():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert abs(rel_err(ref * 1.01, ref) - 0.01) < 1e-12
    assert rel_err(torch.tensor([float("nan"), 1.0]), ref) == float("inf")
