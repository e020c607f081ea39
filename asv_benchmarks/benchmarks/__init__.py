"""asv benchmarks of numbanorm: one module per layer family, machinery in common.py."""
