"""GPU suite: checks and timed benchmarks (on the CPU under --smoke)."""
