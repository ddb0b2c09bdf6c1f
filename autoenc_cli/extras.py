"""Optional dependencies: each feature that needs one names the pip extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from autoenc_cli.errors import UserError


class MissingExtra(UserError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or fail in one line naming ``pip install 'autoenc[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise MissingExtra(
            f"{feature} needs the '{extra}' extra ({missing} is not installed): "
            f'python -m pip install -e ".[{extra}]" (in a clone) or python -m pip install "autoenc[{extra}]"'
        ) from None
