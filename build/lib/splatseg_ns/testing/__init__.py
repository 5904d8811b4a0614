"""What the tests (and benchmarks) build instead of downloading: toy-size models with random weights."""
