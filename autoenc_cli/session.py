"""One training session into a run folder: progress, checkpoints, signals, metrics, figures, report.

``execute`` is what ``autoenc train`` runs once the config is resolved and the experiment built.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from autoenc_cli.artifacts.console import ProgressBars
from autoenc_cli.artifacts.html_report import write_html_report
from autoenc_cli.artifacts.run_figures import render_run_figures
from autoenc_cli.artifacts.run_folder import RunFolder
from autoenc_cli.baselines.pca import pca_baseline_mse
from autoenc_cli.errors import TrainingInterrupted
from autoenc_cli.experiment import Experiment
from autoenc_cli.training.loop import FitResult, Trainer
from autoenc_cli.training.metrics import psnr


class CheckpointWriter:
    """Observer that keeps history.csv and checkpoints/{last,best}.pt current after every epoch."""

    def __init__(self, folder: RunFolder, config_yaml: str) -> None:
        self.folder, self.config_yaml = folder, config_yaml

    def on_phase_start(self, phase: Any, steps_per_epoch: int) -> None:
        pass

    def on_step(self, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any], improved: bool, trainer: Trainer) -> None:
        self.folder.write_history(trainer.result.history)
        state = {**trainer.state_dict(), "config": self.config_yaml}
        self.folder.save_checkpoint("last", state)
        if improved:
            self.folder.save_checkpoint("best", state)

    def on_phase_end(self, phase: Any, trainer: Trainer) -> None:
        if len(trainer.experiment.phases) > 1:  # one checkpoint per stage boundary
            self.folder.save_checkpoint(phase.name, {**trainer.state_dict(), "config": self.config_yaml})


class FanOut:
    """Forward each loop event to several observers."""

    def __init__(self, *observers: Any) -> None:
        self.observers = observers

    def __getattr__(self, event: str) -> Any:
        return lambda *args: [getattr(observer, event)(*args) for observer in self.observers]


def count_parameters(model: Any) -> int:
    """Distinct parameters, so a weight shared by two layers counts once."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())


def final_metrics(experiment: Experiment, result: FitResult) -> dict[str, Any]:
    last = result.history[-1]
    data = experiment.data
    metrics: dict[str, Any] = {
        "status": "completed",
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
        "val_mse": last["val_mse"],
        "val_psnr": psnr(last["val_mse"]),
        "val_penalty": last["val_penalty"],
        "l0": last["l0"],
        "dead_fraction": last["dead_fraction"],
        "dense_fraction": last["dense_fraction"],
        "mean_activation": last["mean_activation"],
        **{key: last[key] for key in ("val_psnr_noisy", "val_psnr_denoised") if key in last},
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "code_dim": experiment.model.code_dim,
        "num_parameters": count_parameters(experiment.model),
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
        "device": str(experiment.device),
        "seed": experiment.run.seed,
    }
    if experiment.run.trainer.pca_baseline:
        metrics["pca_val_mse"] = pca_baseline_mse(data.train.images, data.val.images, experiment.model.code_dim)
    return metrics


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """Ctrl-C or SIGTERM asks the trainer to stop after the current step; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = signal.Signals(signum).name

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def execute(
    experiment: Experiment,
    folder: RunFolder,
    config_yaml: str,
    show_progress: bool = True,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, then write metrics.json and figures. An interruption saves a resumable checkpoint; any
    failure leaves a metrics.json marked interrupted or failed."""
    started = time.perf_counter()
    total_epochs = sum(phase.epochs for phase in experiment.phases)
    done = resume["epoch"] if resume else 0
    if not experiment.world.is_main:  # under torchrun only rank 0 shows progress and writes files
        return final_metrics(experiment, Trainer(experiment).fit(resume))
    try:
        with ProgressBars(total_epochs, completed=done, enabled=show_progress) as bars:
            trainer = Trainer(experiment, FanOut(bars, CheckpointWriter(folder, config_yaml)))
            with stop_on_signals(trainer):
                result = trainer.fit(resume)
        metrics = final_metrics(experiment, result)
        if experiment.run.trainer.figures:
            render_run_figures(experiment, folder.figures, result.history, result.final_codes)
    except TrainingInterrupted as interruption:
        folder.save_checkpoint("last", {**trainer.state_dict(), "config": config_yaml})
        folder.write_history(trainer.result.history)
        folder.write_metrics({"status": "interrupted", "stopped": str(interruption), "signal": trainer.stop_requested})
        raise TrainingInterrupted(
            f"{trainer.stop_requested} {interruption}: checkpoint saved; "
            f"continue with: autoenc train resume={folder.path}"
        ) from None
    except BaseException as error:
        folder.write_metrics({"status": "failed", "error": f"{type(error).__name__}: {error}"})
        raise
    metrics["wall_seconds"] = time.perf_counter() - started
    folder.write_metrics(metrics)
    write_html_report(folder.path)
    return metrics
