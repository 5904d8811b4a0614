"""Procedural scenes with exact ground truth, for the demo, the tests and the benchmarks (not the method)."""
