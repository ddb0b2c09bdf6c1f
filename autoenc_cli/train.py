"""The ``autoenc train`` job: resolve the config, build the run, train, and write the run folder."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.artifacts.console import ProgressBars, console, metrics_table
from autoenc_cli.artifacts.run_figures import render_run_figures
from autoenc_cli.artifacts.run_folder import RunFolder
from autoenc_cli.baselines.pca import pca_baseline_mse
from autoenc_cli.errors import UserAbort, UserError
from autoenc_cli.experiment import Experiment, build_experiment
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.checkpoint import load_checkpoint
from autoenc_cli.training.loop import FitResult, Trainer
from autoenc_cli.training.metrics import psnr

log = logging.getLogger("autoenc")

HYDRA_OWN_FILES = {".hydra", "train.log"}


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


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files (the run never started)."""
    if run_dir.is_dir() and {entry.name for entry in run_dir.iterdir()} <= HYDRA_OWN_FILES:
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def execute(
    experiment: Experiment,
    folder: RunFolder,
    config_yaml: str,
    show_progress: bool = True,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, then write metrics.json and figures; a failure still leaves a metrics.json marked failed."""
    started = time.perf_counter()
    total_epochs = sum(phase.epochs for phase in experiment.phases)
    try:
        done = resume["epoch"] if resume else 0
        with ProgressBars(total_epochs, completed=done, enabled=show_progress) as bars:
            result = Trainer(experiment, FanOut(bars, CheckpointWriter(folder, config_yaml))).fit(resume)
        metrics = final_metrics(experiment, result)
        if experiment.run.trainer.figures:
            render_run_figures(experiment, folder.figures, result.history, result.final_codes)
    except BaseException as error:
        folder.write_metrics({"status": "failed", "error": f"{type(error).__name__}: {error}"})
        raise
    metrics["wall_seconds"] = time.perf_counter() - started
    folder.write_metrics(metrics)
    return metrics


def resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    checkpoint = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise UserError(
            f"resume='{resume}' has no checkpoint; give a run folder with checkpoints/last.pt or a .pt file"
        )
    return checkpoint


def load_resume(cfg: DictConfig, task_overrides: list[str]) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint to continue from and the run's own saved config."""
    others = [override for override in task_overrides if not override.startswith("resume=")]
    if others:
        raise UserError(f"resume continues a run with its saved config; drop the other overrides: {' '.join(others)}")
    state = load_checkpoint(resume_checkpoint(str(cfg.resume)))
    saved = OmegaConf.create(state["config"])
    return state, saved


def train_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task function behind ``autoenc train``."""
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    resume_state = None
    try:
        if cfg.resume:
            resume_state, cfg = load_resume(cfg, list(hydra_config.overrides.task))
        run = resolve(cfg)
        experiment = build_experiment(run)
    except UserError as error:
        discard_if_empty(run_dir)
        if hydra_config.mode == RunMode.RUN:
            raise UserAbort(error) from None
        raise
    model = experiment.model
    log.info("run folder %s", run_dir)
    console.print(
        f"[bold]autoenc train[/] {run.model.name} {experiment.data.input_shape}->{model.code_dim} "
        f"on {run.data.name} ({len(experiment.data.train)} train / {len(experiment.data.val)} val), "
        f"device {experiment.device}, "
        + ", ".join(f"{phase.name} {phase.epochs} epochs" for phase in experiment.phases),
        soft_wrap=True,
    )
    if resume_state is not None:
        console.print(f"resuming after epoch {resume_state['epoch']} ({resume_state['history'][-1]['stage']})")
    metrics = execute(experiment, RunFolder(run_dir), OmegaConf.to_yaml(cfg), resume=resume_state)
    log.info("metrics %s", metrics)
    console.print(metrics_table(metrics, title="final metrics"))
    console.print(f"run folder: [bold]{run_dir}[/]", soft_wrap=True)
    return metrics
