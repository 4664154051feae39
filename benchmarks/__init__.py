"""Side-by-side benchmarks: each compares systems in one run and reports ratios (README)."""
