"""Grids and their executors: planning, the local worker pool, Slurm job arrays, status and summaries."""
