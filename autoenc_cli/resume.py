"""``resume=``: which config and checkpoint a run continues from.

A single run resumes from RUN_DIR or a .pt with its saved config. The command that started it may be
repeated with ``resume=RUN_DIR`` added: overrides equal to the saved values are accepted, and only
``RESUME_OVERRIDABLE`` keys may change (``trainer.epochs=N`` extends a run). A completed run is left as
it is. In a sweep, ``resume=SWEEP_DIR`` re-runs the same command: finished jobs are skipped,
interrupted or failed ones continue from their last checkpoint, jobs that never started start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import CHECKPOINT_SUFFIX, LAST_CHECKPOINT, RunLayout
from autoenc_cli.io import read_json
from autoenc_cli.schema.resolve import typed_config, with_former_values
from autoenc_cli.training.checkpoint import check_checkpoint_belongs, load_checkpoint

# What may change when a single run is resumed: how long it trains, where, and where it is logged; not what it
# is. A key under a listed group (logger.mlflow.experiment) may change too.
RESUME_OVERRIDABLE = (
    "trainer.epochs",
    "trainer.device",
    "trainer.log_every",
    "trainer.figures",
    "trainer.threads",
    "logger",
    "gallery",  # what the report shows, not what trains
)


@dataclass
class ResumePoint:
    cfg: Optional[DictConfig]  # the config to train; None: nothing to do (see ``complete``)
    state: Optional[dict[str, Any]] = None  # the checkpoint to continue from; None: start fresh
    complete: str = ""  # why there is nothing to do


def resume_point(cfg: DictConfig, run_dir: Path, task_overrides: list[str], multirun: bool) -> ResumePoint:
    if not cfg.resume:
        return ResumePoint(cfg)
    if not multirun:
        return _resume_run(cfg, str(cfg.resume), without_resume(task_overrides))
    if read_json(RunLayout(run_dir).metrics_json).get("status") == "completed":
        return ResumePoint(None, complete=f"already completed, skipped: {run_dir}")
    if not RunLayout(run_dir).last_checkpoint.is_file():
        return ResumePoint(cfg)
    if without_resume(saved_overrides(run_dir)) != without_resume(task_overrides):
        raise UserError(
            f"'{run_dir}' was run with [{' '.join(without_resume(saved_overrides(run_dir)))}]; "
            "resume a sweep with the command that started it"
        )
    state, saved = load_resume(str(run_dir))
    return ResumePoint(saved, state)


def _resume_run(cfg: DictConfig, resume: str, overrides: list[str]) -> ResumePoint:
    state, saved = load_resume(resume)
    extended = False
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        wanted, current = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        if key in RESUME_OVERRIDABLE or key.partition(".")[0] in RESUME_OVERRIDABLE:
            extended |= key == "trainer.epochs" and wanted > current
            OmegaConf.update(saved, key, wanted, merge=False)
        elif _plain(wanted) != _plain(current):
            raise UserError(
                f"resume continues a run with its saved config; '{override}' would change {key} "
                f"(saved: {_plain(current)!r}); only {', '.join(RESUME_OVERRIDABLE)} may change on resume"
            )
    run_dir = run_folder_of(resume)
    if read_json(RunLayout(run_dir).metrics_json).get("status") == "completed" and not extended:
        epochs = OmegaConf.select(saved, "trainer.epochs")
        return ResumePoint(
            None,
            complete=f"'{run_dir}' is already complete; nothing to resume (add trainer.epochs=N with N > {epochs} "
            "to train it longer)",
        )
    return ResumePoint(saved, state)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_folder_of(resume: str) -> Path:
    path = Path(resume)
    return path.parent.parent if path.suffix == CHECKPOINT_SUFFIX else path


def resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    checkpoint = RunLayout(path).last_checkpoint if path.is_dir() else path
    if not checkpoint.is_file():
        raise UserError(
            f"resume='{resume}' has no checkpoint; give a run folder with {LAST_CHECKPOINT} or a {CHECKPOINT_SUFFIX} "
            "file"
        )
    return checkpoint


def load_resume(resume: str) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint to continue from and the run's own saved config; a checkpoint that another run
    wrote (a foreign last.pt copied in) is refused."""
    checkpoint = resume_checkpoint(resume)
    state = load_checkpoint(checkpoint)
    check_checkpoint_belongs(state, checkpoint, run_folder_of(resume), typed_config(state["config"], saved=True))
    return state, with_former_values(state["config"])


def saved_overrides(run_dir: Path) -> list[str]:
    path = RunLayout(run_dir).hydra_overrides
    return [str(item) for item in OmegaConf.load(path)] if path.is_file() else []


def without_resume(overrides: list[str]) -> list[str]:
    return [override for override in overrides if not override.startswith("resume=")]
