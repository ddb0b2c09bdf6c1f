"""autoenc: a config-driven experiment runner for autoencoders in PyTorch.

``from autoenc_cli import load_run`` rebuilds a trained run's model from its folder (see
``autoenc_cli.evaluation.loading``); it is imported on first use so ``autoenc --help`` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from autoenc_cli.evaluation.loading import load_run

        return load_run
    raise AttributeError(f"module 'autoenc_cli' has no attribute {name!r}")
