"""The run folder's files (metrics.json, history.csv, checkpoints/) and the callback that keeps them current."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from autoenc_cli.io import read_json, write_csv, write_json
from autoenc_cli.training.callbacks import Callback, EpochEnd, Failed, Interrupted, PhaseEnd
from autoenc_cli.training.checkpoint import save_checkpoint
from autoenc_cli.training.records import EpochRecord, RunSummary, as_dict


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"

    def write_metrics(self, summary: RunSummary) -> None:
        write_json(self.path / "metrics.json", as_dict(summary))

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.path / "metrics.json")

    def write_history(self, records: Sequence[EpochRecord]) -> None:
        write_csv(self.path / "history.csv", [as_dict(record) for record in records])

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.checkpoints / f"{name}.pt"
        save_checkpoint(path, state)
        return path


class RunFolderWriter(Callback):
    """Keeps history.csv and checkpoints/{last,best}.pt current after every epoch, writes one checkpoint
    per stage boundary of a multi-phase schedule, and marks metrics.json interrupted or failed."""

    def __init__(self, folder: RunFolder, config_yaml: str) -> None:
        self.folder, self.config_yaml = folder, config_yaml

    def _state(self, snapshot: Any) -> dict[str, Any]:
        return {**snapshot(), "config": self.config_yaml}

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.folder.write_history(event.history)
        state = self._state(event.snapshot)
        self.folder.save_checkpoint("last", state)
        if event.improved:
            self.folder.save_checkpoint("best", state)

    def on_phase_end(self, event: PhaseEnd) -> None:
        if event.phase_count > 1:
            self.folder.save_checkpoint(event.name, self._state(event.snapshot))

    def on_interrupt(self, event: Interrupted) -> None:
        self.folder.save_checkpoint("last", self._state(event.snapshot))
        self.folder.write_history(event.history)
        self.folder.write_metrics(RunSummary(status="interrupted", stopped=event.where, signal=event.signal))

    def on_failure(self, event: Failed) -> None:
        error = event.error
        self.folder.write_metrics(RunSummary(status="failed", error=f"{type(error).__name__}: {error}"))
