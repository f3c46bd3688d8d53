"""Efficiency: analytic parameter and cache accounting, throughput and memory measurement, kernel benchmarks."""
