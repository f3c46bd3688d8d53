"""One function per op. Each op has a pure-PyTorch reference beside it (the ground truth every fast
path is tested against); ``backend.py`` picks the implementation at run time."""

from ablate.kernels.attention import MaskSpec, attention, attention_ref
from ablate.kernels.conv import causal_conv1d, causal_conv1d_ref
from ablate.kernels.selective_scan import selective_scan, selective_scan_ref
from ablate.kernels.ssd import ssd_scan, ssd_scan_ref, ssd_scan_sequential_ref

__all__ = [
    "attention",
    "MaskSpec",
    "attention_ref",
    "causal_conv1d",
    "causal_conv1d_ref",
    "selective_scan",
    "selective_scan_ref",
    "ssd_scan",
    "ssd_scan_ref",
    "ssd_scan_sequential_ref",
]
