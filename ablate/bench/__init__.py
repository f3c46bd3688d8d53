"""Measurement: analytic parameter and cache accounting; throughput benchmarks."""
