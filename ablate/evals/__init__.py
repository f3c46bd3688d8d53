"""Evaluation through lm-eval: the model adapter, suites, task resolution."""
