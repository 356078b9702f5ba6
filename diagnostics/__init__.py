"""Convergence and reproducibility diagnostics for PyTorch training recipes."""

__version__ = "0.1.0"
