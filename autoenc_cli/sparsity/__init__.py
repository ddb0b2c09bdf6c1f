"""Code transforms and penalties that make codes sparse (the ``sparsity`` config group)."""

from autoenc_cli.sparsity.base import Sparsity

__all__ = ["Sparsity"]
