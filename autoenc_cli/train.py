"""The ``autoenc train`` job (Hydra task function): resume, sweep-job failures, one-line errors."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.artifacts.console import console, metrics_table
from autoenc_cli.artifacts.run_folder import RunFolder
from autoenc_cli.errors import TrainingInterrupted, UserAbort, UserError
from autoenc_cli.experiment import build_experiment
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.session import execute
from autoenc_cli.training.checkpoint import load_checkpoint
from autoenc_cli.training.distributed import shutdown as shutdown_distributed

log = logging.getLogger("autoenc")

HYDRA_OWN_FILES = {".hydra", "train.log"}

# What may change when a single run is resumed: how long it trains and where, not what it is.
RESUME_OVERRIDABLE = ("trainer.epochs", "trainer.device", "trainer.log_every", "trainer.figures", "trainer.threads")


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files (the run never started)."""
    if run_dir.is_dir() and {entry.name for entry in run_dir.iterdir()} <= HYDRA_OWN_FILES:
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    checkpoint = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise UserError(
            f"resume='{resume}' has no checkpoint; give a run folder with checkpoints/last.pt or a .pt file"
        )
    return checkpoint


def load_resume(resume: str) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint to continue from and the run's own saved config."""
    state = load_checkpoint(resume_checkpoint(resume))
    return state, OmegaConf.create(state["config"])


def saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(item) for item in OmegaConf.load(path)] if path.is_file() else []


def without_resume(overrides: list[str]) -> list[str]:
    return [override for override in overrides if not override.startswith("resume=")]


def job_status(run_dir: Path) -> str:
    try:
        return str(RunFolder(run_dir).read_metrics().get("status", "unknown"))
    except (FileNotFoundError, ValueError):
        return "not started"


def prepare(cfg: DictConfig, run_dir: Path, task_overrides: list[str], multirun: bool) -> tuple[Any, Any]:
    """The config and the checkpoint state to train from, honouring ``resume``.

    A single run resumes from RUN_DIR or a .pt with its saved config (``trainer.epochs=N`` may extend
    it; see RESUME_OVERRIDABLE). In a sweep, ``resume=SWEEP_DIR``
    re-runs the same command: finished jobs are skipped (None, None), interrupted or failed ones
    continue from their last checkpoint, jobs that never started start now.
    """
    if not cfg.resume:
        return cfg, None
    if not multirun:
        state, saved = load_resume(str(cfg.resume))
        for override in without_resume(task_overrides):
            key = override.partition("=")[0]
            if key not in RESUME_OVERRIDABLE:
                raise UserError(
                    f"resume continues a run with its saved config; '{override}' cannot change on resume "
                    f"(allowed: {', '.join(RESUME_OVERRIDABLE)})"
                )
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
        return saved, state
    if job_status(run_dir) == "completed":
        return None, None
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return cfg, None
    if without_resume(saved_overrides(run_dir)) != without_resume(task_overrides):
        raise UserError(
            f"'{run_dir}' was run with [{' '.join(without_resume(saved_overrides(run_dir)))}]; "
            "resume a sweep with the command that started it"
        )
    state, saved = load_resume(str(run_dir))
    return saved, state


def run_training(cfg: DictConfig, run_dir: Path, task_overrides: list[str], multirun: bool) -> dict[str, Any]:
    cfg, resume_state = prepare(cfg, run_dir, task_overrides, multirun)
    if cfg is None:
        console.print(f"already completed, skipped: {run_dir}", soft_wrap=True)
        return RunFolder(run_dir).read_metrics()
    run = resolve(cfg)
    experiment = build_experiment(run)
    if not experiment.world.is_main:
        return execute(experiment, RunFolder(run_dir), OmegaConf.to_yaml(cfg), resume=resume_state)
    log.info("run folder %s", run_dir)
    console.print(
        f"[bold]autoenc train[/] {run.model.name} {experiment.data.input_shape}->{experiment.model.code_dim} "
        f"on {run.data.name} ({len(experiment.data.train)} train / {len(experiment.data.val)} val), "
        f"device {experiment.device}, "
        + ", ".join(f"{phase.name} {phase.epochs} epochs" for phase in experiment.phases),
        soft_wrap=True,
    )
    if resume_state is not None:
        console.print(f"resuming after {resume_state['epoch']} epochs (+{resume_state['step_in_epoch']} steps)")
    metrics = execute(experiment, RunFolder(run_dir), OmegaConf.to_yaml(cfg), resume=resume_state)
    log.info("metrics %s", metrics)
    console.print(metrics_table(metrics, title="final metrics"))
    console.print(f"run folder: [bold]{run_dir}[/]", soft_wrap=True)
    return metrics


def train_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task function behind ``autoenc train``.

    A single run reports a user mistake as one line. In a sweep a failed job is recorded (metrics.json
    and the sweep summary say failed) and the other jobs go on; an interruption stops the sweep.
    """
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    try:
        try:
            return run_training(cfg, run_dir, list(hydra_config.overrides.task), multirun)
        finally:
            shutdown_distributed()
            if int(os.environ.get("RANK", "0")) > 0:  # a torchrun rank's scratch folder (see hydra_app)
                shutil.rmtree(run_dir, ignore_errors=True)
    except TrainingInterrupted as error:
        raise UserAbort(error) from None
    except UserError as error:
        discard_if_empty(run_dir)
        if not multirun:
            raise UserAbort(error) from None
        return record_job_failure(run_dir, error)
    except Exception as error:
        if not multirun:
            raise
        log.exception("job failed")
        return record_job_failure(run_dir, error)


def record_job_failure(run_dir: Path, error: BaseException) -> dict[str, Any]:
    message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    console.print(f"[red]job failed[/]: {message}", soft_wrap=True)
    metrics = {"status": "failed", "error": message}
    RunFolder(run_dir).write_metrics(metrics)
    return metrics
