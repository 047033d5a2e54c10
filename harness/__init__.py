"""Long-tailed deep-clustering benchmark harness."""

__version__ = "0.1.0"
