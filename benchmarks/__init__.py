"""Benchmarks, each runnable as a script from the repo root (`python benchmarks/ingress.py`)."""
