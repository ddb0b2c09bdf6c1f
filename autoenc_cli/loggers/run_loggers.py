"""The run's loggers together: one training callback that turns the loop's events into what each logger takes.

Metrics are host numbers the loop already has (no extra device sync); figures are drawn once and given to
every logger that wants them; a logger that breaks during training stops with a note, never the run.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import DICTIONARY_PNG, FIGURES, LATENT_MAP_PNG, RECONSTRUCTIONS_PNG
from autoenc_cli.loggers.base import Logger, RunContext, flatten, logger_classes
from autoenc_cli.registry import REGISTRY
from autoenc_cli.training.callbacks import Callback, EpochEnd, Failed, Interrupted, StepEnd
from autoenc_cli.training.records import EpochRecord, RunSummary, as_dict

log = logging.getLogger("autoenc")

# The figures logged while training (all of the run folder's figures are logged at the end).
TRAINING_FIGURES = (RECONSTRUCTIONS_PNG, DICTIONARY_PNG, LATENT_MAP_PNG)


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """An epoch's numbers as tracker tags: ``val/mse``, ``val/l0``, ``train/epoch_loss``, ``lr``, ``epoch``."""
    metrics = {"train/epoch_loss": record.train_loss, "lr": record.lr, "epoch": float(record.epoch)}
    for column in dataclasses.fields(record):
        value, name = getattr(record, column.name), column.metadata.get("evaluation")
        if name is not None and isinstance(value, (int, float)):
            metrics[f"val/{name}"] = float(value)
    return metrics


def summary_metrics(summary: RunSummary) -> dict[str, float]:
    """The finished run's scalar numbers (metrics.json) as ``summary/<name>``."""
    return {
        f"summary/{name}": float(value)
        for name, value in as_dict(summary).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


class RunLoggers(Callback):
    """Every logger the run's config selects, started before training and finished with the run."""

    def __init__(self, loggers: dict[str, Logger], parts: Any) -> None:
        self.loggers, self.parts = loggers, parts
        self.window = (0, 0.0)  # (step in epoch, loss sum) at the last report: the next one is the mean since

    @classmethod
    def build(
        cls,
        parts: Any,
        folder: Path,
        run_id: Optional[str],
        sweep_dir: Optional[Path],
        resume: Optional[dict[str, Any]],
    ) -> "RunLoggers":
        config = parts.config
        saved = (resume or {}).get("loggers") or {}
        hparams = flatten({key: value for key, value in vars(config).items() if key not in ("logger", "resume")})
        name = f"{sweep_dir.name}/{folder.name}" if sweep_dir is not None else folder.name
        loggers = {}
        for option, member in config.logger.items():
            context = RunContext(
                folder=folder,
                run_id=run_id or "",
                name=name,
                hparams=hparams,
                output_root=Path(config.output_root),
                sweep_dir=sweep_dir,
                saved=dict(saved.get(option) or {}),
                start_step=int((resume or {}).get("global_step", 0)),
            )
            loggers[option] = REGISTRY.build(member, context)
        run_loggers = cls(loggers, parts)
        if resume and resume.get("step_in_epoch"):  # resumed mid-epoch: the next loss is the mean since then
            run_loggers.window = (int(resume["step_in_epoch"]), float(resume["running_loss"]))
        return run_loggers

    def start(self) -> dict[str, dict[str, Any]]:
        """Open every logged run; what to keep in checkpoints so a resumed run continues the same ones."""
        kept: dict[str, dict[str, Any]] = {}
        for option, logger in self.loggers.items():
            try:
                kept[option] = logger.start()
            except Exception as error:  # noqa: BLE001 - a tracker that cannot start is the user's to fix
                self._each("finish", "failed", wanted=list(kept))  # close the ones already opened
                if isinstance(error, UserError):
                    raise
                raise UserError(f"logger={option} could not start: {_first_line(error)}") from None
        return kept

    def _each(self, action: str, *args: Any, wanted: Optional[Sequence[str]] = None, **kwargs: Any) -> None:
        for option in list(wanted if wanted is not None else self.loggers):
            try:
                getattr(self.loggers[option], action)(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - a tracker failing never fails the run
                from autoenc_cli.artifacts.console import console

                note = f"logger={option} stopped logging ({_first_line(error)}); the run folder is complete anyway"
                log.warning(note)
                console.print(f"[yellow]note[/]: {note}", soft_wrap=True)
                del self.loggers[option]

    def on_step(self, event: StepEnd) -> None:
        steps, total = self.window
        if event.step < steps:  # a new epoch
            steps, total = 0, 0.0
        loss_sum = event.loss * event.step
        if event.step > steps:
            self._each("log_metrics", {"train/loss": (loss_sum - total) / (event.step - steps)}, event.global_step)
        self.window = (event.step, loss_sum)

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.window = (0, 0.0)
        self._each("log_metrics", epoch_metrics(event.record), event.global_step)
        due = [
            option
            for option, logger in self.loggers.items()
            if logger.config.figures_every and event.record.epoch % logger.config.figures_every == 0
        ]
        if due and event.network is not None and self.parts.config.trainer.figures:
            self._log_training_figures(event, due)
        self._each("flush")

    def _log_training_figures(self, event: EpochEnd, wanted: list[str]) -> None:
        from autoenc_cli.artifacts.run_figures import draw, run_figure_drawings

        with tempfile.TemporaryDirectory(prefix="autoenc-figures-") as scratch:
            # Figures draw samples (latent map, noise): the training's random streams stay as they were.
            with torch.random.fork_rng(devices=[]):
                drawings, _ = run_figure_drawings(
                    self.parts, event.network, Path(scratch), event.history, event.codes, only=TRAINING_FIGURES
                )
                written, _ = draw(drawings)
            images = {f"{FIGURES}/{path.stem}": path for path in written}
            self._each("log_images", images, event.global_step, wanted=wanted)

    def on_interrupt(self, event: Optional[Interrupted]) -> None:
        self._each("finish", "interrupted")

    def on_failure(self, event: Failed) -> None:
        self._each("finish", "failed")

    def finish(self, summary: RunSummary, figures: Sequence[Path], step: int) -> None:
        """The finished run: its final numbers and every figure of the run folder, then close."""
        self._each("log_metrics", summary_metrics(summary), step)
        images = {f"{FIGURES}/{Path(path).stem}": Path(path) for path in figures}
        if images:
            self._each("log_images", images, step, final=True)
        self._each("finish", "completed")


def finish_sweep(sweep_dir: Path) -> None:
    """After a sweep or study and its report: each tracker closes what its jobs opened for the whole sweep
    (MLflow's parent run); a tracker failing here leaves a note, the sweep's results being written."""
    for logger in logger_classes():
        try:
            logger.finish_sweep(sweep_dir)
        except Exception as error:  # noqa: BLE001 - the sweep's results are written; this is bookkeeping
            log.warning("%s did not finish its record of %s: %s", logger.__name__, sweep_dir, _first_line(error))
