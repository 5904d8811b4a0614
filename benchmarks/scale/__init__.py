"""The parts of `bench_scale.py`, one job each (run that script, not these)."""
