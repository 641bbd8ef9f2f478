"""Digits as images: upload a PNG of a handwritten digit, get a PNG (or JSON) answer.

Serve both graphs and call them (docs/protocols.md shows every way to send the file)::

    python -m examples.digits_png sample digit.png      # a digit from the data set, as a PNG
    dagserve run examples.digits_png:graphs
    curl -s -F image=@digit.png http://127.0.0.1:8000/classify
    curl -s -o answer.png -F image=@digit.png http://127.0.0.1:8000/digits_png

The graphs live in :mod:`examples.digits_png.graph`; the PNG codec (no Pillow: zlib and
struct) in :mod:`examples.digits_png.png`.
"""

from __future__ import annotations

from .graph import DigitUpload, classify, graph, graphs, sample_png

__all__ = ["DigitUpload", "classify", "graph", "graphs", "sample_png"]
