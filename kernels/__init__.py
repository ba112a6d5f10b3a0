"""Compute kernels (installed as hpcml.kernels): pure compute, no MPI, no I/O."""
