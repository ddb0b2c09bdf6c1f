"""What every logger shares: its config fields, what it is told about the run, and the calls it answers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from autoenc_cli.extras import require
from autoenc_cli.schema.fields import number
from autoenc_cli.schema.root import GroupConfig

Scalar = int | float | str | bool


@dataclass
class LoggerConfig(GroupConfig):
    group: ClassVar[str] = "logger"
    module: ClassVar[str] = ""  # the tracker's Python package, installed by the pip extra ``extra``
    extra: ClassVar[str] = ""
    # The standard figures (reconstructions, dictionary, latent map) every this many epochs; every figure
    # of the run folder is logged at the end either way. 0: at the end only.
    figures_every: int = number(5, ge=0)

    def check(self) -> None:
        """A tracker that is not installed fails with the config check, naming its extra."""
        if self.module:  # a tracker written in plain Python needs nothing installed
            require(self.module, self.extra, f"logger={self.name}")


@dataclass
class RunContext:
    """What a logger knows of the run it logs."""

    folder: Path  # the run folder
    run_id: str  # run.json's id
    name: str  # a readable run name: the folder's, with the sweep's job number
    hparams: dict[str, Scalar]  # the whole config, flattened to dotted keys
    output_root: Path
    sweep_dir: Optional[Path]  # the sweep or tune study the run is a job of
    saved: dict[str, Any]  # what this logger kept in the checkpoint being resumed ({} when new)
    start_step: int  # optimizer steps already done (a resumed run logs only later steps)


class Logger:
    """One tracker. Steps are global optimizer steps, so a resumed run continues the same curves.

    A new tracker is one module in this package (its config dataclass, registered with its ``Logger``)
    and one YAML preset in configs/logger/; what else autoenc needs to know of it, it declares here."""

    # What it may write into a run folder before training starts (a folder of its own): a run stopped
    # then is put back as it was, these removed with it.
    run_folder_entries: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def finish_sweep(cls, sweep_dir: Path) -> None:
        """After a sweep or tune study and its report: close what its jobs opened for the whole sweep."""

    def __init__(self, config: LoggerConfig, context: RunContext) -> None:
        self.config, self.context = config, context

    def start(self) -> dict[str, Any]:
        """Open (or, on resume, reopen) the logged run; returns what to keep in checkpoints to reopen it.

        The checkpoints hold the returned dict itself, as it is when each is written: a logger may add to
        it while it logs (W&B keeps the steps it logged there, to log them again in a resumed run)."""
        return {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_images(self, images: dict[str, Path], step: int, final: bool = False) -> None:
        """PNG files by tag (``figures/reconstructions``); ``final``: the finished run's figures."""

    def flush(self) -> None:
        """Send what is buffered (called after every epoch)."""

    def finish(self, status: str) -> None:
        """``completed``, ``failed`` or ``interrupted``."""


def flatten(config: Any, prefix: str = "") -> dict[str, Scalar]:
    """A config as dotted keys with plain values (lists as text), as trackers take hyperparameters."""
    node = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    flat: dict[str, Scalar] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) or (isinstance(value, dict) and value):
            flat.update(flatten(value, f"{dotted}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[dotted] = value
        else:  # None, lists, empty groups
            flat[dotted] = "null" if value is None else str(value)
    return flat


def logger_classes() -> list[type[Logger]]:
    """Every registered tracker's ``Logger`` class."""
    from autoenc_cli.registry import REGISTRY

    return [REGISTRY.entry("logger", name).component for name in REGISTRY.names("logger")]


def run_folder_entries() -> frozenset[str]:
    """What any tracker may write into a run folder before training starts."""
    return frozenset(entry for logger in logger_classes() for entry in logger.run_folder_entries)
