"""Performance budgets of design.md, measured against the simulator: `python -m benchmarks`."""
