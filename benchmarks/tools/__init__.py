"""Diagnostic tools, not benchmarks: each runs on its own (python -m benchmarks.tools.NAME --help)."""
