"""Detect objects in an image, classify each crop with a batched model through a handle, retry the
unsure ones on a sharpened crop (issue 18: handles). See ``graph.py``."""
