"""dagserve's benchmark harness: ``python -m benchmarks.run`` (see run.py; add systems in systems.py)."""
