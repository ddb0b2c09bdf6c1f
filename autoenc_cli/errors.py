"""User-facing errors: each carries a one-line message the CLI prints without a traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file); printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config value that is not allowed. ``key`` is the dotted path, filled in as the error bubbles up."""

    def __init__(self, key: str, value: Any, allowed: str, absolute: bool = False) -> None:
        # absolute: ``key`` is already the full dotted path (a rule in one group about another's key).
        self.key, self.value, self.allowed, self.absolute = key, value, allowed, absolute
        super().__init__(self._render())

    def _render(self) -> str:
        return f"{self.key}={self.value!r} is not allowed: {self.allowed}"

    def within(self, prefix: str) -> "ConfigError":
        """Return the same error with ``prefix`` prepended to its key (``model`` + ``code_dim``)."""
        if self.absolute:
            return self
        key = self.key if self.key.startswith("[") else f".{self.key}" if self.key else ""
        return ConfigError(f"{prefix}{key}", self.value, self.allowed)


class DataError(UserError):
    """A data set that cannot be loaded: missing, empty or malformed."""


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was written, the run can be resumed."""

    exit_code = 130


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunPruned(Exception):
    """A callback stopped the run early by its own rule (a tune trial's pruner): recorded as pruned."""


class UserAbort(BaseException):
    """Carries a ``UserError`` out of a single Hydra job.

    Hydra's job runner catches ``Exception`` and prints its own "Error executing job" line before
    re-raising; a ``BaseException`` passes straight through, so the user sees one line only.
    """

    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error
