"""Benchmarks of ld4mrec-dist: `python benchmarks/run.py --quick`."""
