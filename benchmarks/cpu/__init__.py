"""CPU suite: benchmarks that run on any machine."""
