"""The performance budgets (benchmarks/README.md), measured against the simulator: `python -m benchmarks`."""
