"""Sweeps: named lists of variants and stages, run into a run root, resumable."""
