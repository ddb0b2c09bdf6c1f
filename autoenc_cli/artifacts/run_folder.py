"""The run folder's files (metrics.json, history.csv, checkpoints/) and the callback that keeps them current."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import BEST, LAST, MULTIRUN_YAML, RUN_FILES, RUN_JSON, RunLayout
from autoenc_cli.io import read_json, write_csv, write_json
from autoenc_cli.training.callbacks import Callback, EpochEnd, Failed, Interrupted, PhaseEnd
from autoenc_cli.training.checkpoint import save_checkpoint
from autoenc_cli.training.records import EpochRecord, RunSummary, as_dict

log = logging.getLogger("autoenc")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def refuse_if_taken(path: Path, what: str = "run") -> None:
    """A folder that already holds a run is never written by another one."""
    taken = [name for name in RUN_FILES if (Path(path) / name).exists()]
    where = "hydra.sweep.dir" if what == "sweep" else "hydra.run.dir"
    if taken:
        raise UserError(
            f"'{path}' already holds a run ({', '.join(taken)}); a new {what} never writes into another run's "
            f"folder: continue it with resume={path}, or choose another {where} / output_root"
        )


def refuse_unless_new(path: Path, what: str = "run") -> None:
    """A new run or sweep gets a folder of its own: one that does not exist yet or is empty, and that
    is not inside another run's folder (``output_root=RUN_DIR``, ``hydra.run.dir=RUN_DIR/checkpoints``)."""
    path = Path(path)
    refuse_if_taken(path, what)
    for parent in path.absolute().parents:
        if (parent / RUN_JSON).is_file():
            raise UserError(f"'{path}' is inside the run folder '{parent}'; a new {what} gets a folder of its own")
    if (path / MULTIRUN_YAML).is_file():
        raise UserError(f"'{path}' already holds a sweep; finish it with the same command plus resume={path}")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(
            f"'{path}' already holds files; a new {what} gets a new or empty folder (choose another "
            f"hydra.{'sweep' if what == 'sweep' else 'run'}.dir or output_root)"
        )


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.layout = RunLayout(self.path)

    def start(self, config_yaml: str, check_free: bool = True) -> dict[str, Any]:
        """run.json: who this run is (its id, for checkpoint fingerprints), when it started, the config it
        uses (paths made absolute) and a hash of Hydra's .hydra/config.yaml, so a later hand edit shows."""
        if check_free:
            refuse_if_taken(self.path)
        hydra_config = self.layout.hydra_config
        identity = {
            "run_id": uuid.uuid4().hex,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config_yaml,
            "hydra_config_sha256": sha256_text(hydra_config.read_text()) if hydra_config.is_file() else None,
        }
        write_json(self.layout.run_json, identity)
        return identity

    def continued(self, config_yaml: str) -> dict[str, Any]:
        """The identity of a run being resumed (a run from before run.json, or a sweep job that never
        trained, gets one now)."""
        return self.identity() or self.start(config_yaml, check_free=False)

    def write_hydra_record(self, overrides: list[str], cfg: Any = None) -> None:
        """.hydra/ as Hydra writes it for a sweep's job: the overrides that made the run and its config,
        for a run Hydra did not start (a tune trial)."""
        from omegaconf import OmegaConf

        self.layout.hydra.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            OmegaConf.save(cfg, self.layout.hydra_config)
        OmegaConf.save(OmegaConf.create(list(overrides)), self.layout.hydra_overrides)

    def identity(self) -> dict[str, Any]:
        return read_json(self.layout.run_json)

    def hydra_config_edited(self) -> bool:
        """True when .hydra/config.yaml no longer is what Hydra wrote when the run started."""
        expected = self.identity().get("hydra_config_sha256")
        hydra_config = self.layout.hydra_config
        return bool(expected) and hydra_config.is_file() and sha256_text(hydra_config.read_text()) != expected

    def write_metrics(self, summary: RunSummary) -> None:
        write_json(self.layout.metrics_json, as_dict(summary))

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.layout.metrics_json)

    def write_history(self, records: Sequence[EpochRecord]) -> None:
        write_csv(self.layout.history_csv, [as_dict(record) for record in records])

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.layout.checkpoint(name)
        save_checkpoint(path, state)
        return path


class RunFolderWriter(Callback):
    """Keeps history.csv and checkpoints/{last,best}.pt current after every epoch, writes one checkpoint
    per stage boundary of a multi-phase schedule, and marks metrics.json interrupted or failed."""

    def __init__(
        self,
        folder: RunFolder,
        config_yaml: str,
        fingerprint: dict[str, Any] | None = None,
        logged_runs: dict[str, Any] | None = None,
    ) -> None:
        self.folder, self.config_yaml, self.fingerprint = folder, config_yaml, fingerprint or {}
        self.logged_runs = logged_runs or {}

    def _state(self, snapshot: Any) -> dict[str, Any]:
        """The Trainer's state, with the config that produced it, its fingerprint (run, model, data) and the
        ids of the runs its loggers write to (a resume continues those)."""
        return {**snapshot(), "config": self.config_yaml, "fingerprint": self.fingerprint, "loggers": self.logged_runs}

    def on_epoch_end(self, event: EpochEnd) -> None:
        record = event.record
        log.info(
            "epoch %d (%s): train_loss %.6g, val_loss %.6g, val_mse %.6g, l0 %.4g, dead %.3f, lr %.3g, %.1f s",
            record.epoch, record.stage, record.train_loss, record.val_loss, record.val_mse, record.l0,
            record.dead_fraction, record.lr, record.seconds,
        )  # fmt: skip
        self.folder.write_history(event.history)
        state = self._state(event.snapshot)
        self.folder.save_checkpoint(LAST, state)
        if event.improved:
            self.folder.save_checkpoint(BEST, state)

    def on_phase_end(self, event: PhaseEnd) -> None:
        if event.phase_count > 1:
            self.folder.save_checkpoint(event.name, self._state(event.snapshot))

    def on_interrupt(self, event: Interrupted) -> None:
        if event.snapshot is not None:
            self.folder.save_checkpoint(LAST, self._state(event.snapshot))
            self.folder.write_history(event.history)
        if self.folder.layout.last_checkpoint.is_file():  # else nothing to continue: the folder is removed
            self.folder.write_metrics(RunSummary(status="interrupted", stopped=event.where, signal=event.signal))

    def on_failure(self, event: Failed) -> None:
        error = event.error
        self.folder.write_metrics(RunSummary(status="failed", error=f"{type(error).__name__}: {error}"))
