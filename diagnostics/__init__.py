"""Convergence and reproducibility diagnostics for PyTorch training recipes.

Your own recipes join the grid through ``register_optimizer``, ``register_scheduler`` and
``register_model`` (``diagnostics.grid.plugins``)."""

from diagnostics.grid.plugins import register_model, register_optimizer, register_scheduler

__all__ = ["register_model", "register_optimizer", "register_scheduler"]
__version__ = "0.1.0"
