"""matplotlib for every figure longlab draws, headless: ``pyplot()`` is ``matplotlib.pyplot`` on the Agg
backend, or None when matplotlib is not installed (a figure is then skipped, never an error)."""

from __future__ import annotations


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


__all__ = ["pyplot"]
