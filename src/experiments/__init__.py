"""Experiments over many runs: sweeps (offline W&B sweep files) and the report (table, frontier, curves)."""
