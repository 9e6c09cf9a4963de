"""reconciler: declarative reconciliation of GPU model serving on Ray."""

__version__ = "0.1.0"
