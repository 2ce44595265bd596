"""jsoftmax benchmarks: run with ``python -m benchmarks.run`` (never part of the test run)."""
