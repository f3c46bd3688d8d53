"""Triton fast paths. Each kernel module registers itself with its op in ablate/kernels/<op>.py;
nothing here is imported unless triton is installed."""
