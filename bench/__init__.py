"""Benchmarks of the kernels and the agent: speed (run.py, speed.py, startup.py, workloads.py)
and accuracy (accuracy.py). Not installed with the package; run from a checkout."""
