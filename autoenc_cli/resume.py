"""``resume=``: which config and checkpoint a run continues from.

A single run resumes from RUN_DIR or a .pt with its saved config (``trainer.epochs=N`` may extend it;
see RESUME_OVERRIDABLE). In a sweep, ``resume=SWEEP_DIR`` re-runs the same command: finished jobs are
skipped, interrupted or failed ones continue from their last checkpoint, jobs that never started start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from autoenc_cli.errors import UserError
from autoenc_cli.io import read_json
from autoenc_cli.training.checkpoint import load_checkpoint

# What may change when a single run is resumed: how long it trains and where, not what it is.
RESUME_OVERRIDABLE = ("trainer.epochs", "trainer.device", "trainer.log_every", "trainer.figures", "trainer.threads")

Resumed = tuple[Optional[DictConfig], Optional[dict[str, Any]]]


def resume_point(cfg: DictConfig, run_dir: Path, task_overrides: list[str], multirun: bool) -> Resumed:
    """The config to train and the checkpoint state to continue from (None: start fresh); (None, None)
    for a sweep job that already completed."""
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
    if read_json(run_dir / "metrics.json").get("status") == "completed":
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
