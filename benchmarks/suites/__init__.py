"""The benchmark suites behind ``python -m benchmarks.run`` (hot path, memory, fits, search, sparse, scaling)."""
