"""Load a finished run: its config, the model in the right structure, and its weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from autoenc_cli.errors import UserError
from autoenc_cli.experiment import Experiment, build_experiment
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.checkpoint import load_checkpoint


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``best`` or ``last`` in the run's checkpoints/, or a path to a .pt file."""
    if not run_dir.is_dir():
        raise UserError(f"run='{run_dir}' is not a run folder")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last") else Path(checkpoint)
    if not path.is_file():
        raise UserError(
            f"no checkpoint at '{path}'; the run folder needs checkpoints/{checkpoint}.pt (checkpoint=best|last|PATH)"
        )
    return path


def load_trained(
    run_dir: Path, checkpoint: str = "best", data: Optional[Any] = None, device: str = "auto"
) -> Experiment:
    """The run's experiment with trained weights, in evaluation mode.

    ``data`` (a typed data config) swaps in another data set; its images must have the run's shape.
    Layer-wise runs replay their phases first so the model has the checkpoint's structure (tied or not).
    """
    state = load_checkpoint(checkpoint_path(run_dir, checkpoint))
    run = resolve(OmegaConf.create(state["config"]))
    run.trainer.device = device
    if data is not None:
        original_shape = tuple(state["input_shape"])
        run.data = data
        experiment = build_experiment(run)
        if experiment.data.input_shape != original_shape:
            raise UserError(
                f"data={data.name} gives images of shape {experiment.data.input_shape}, "
                f"but the run's model takes {original_shape}"
            )
    else:
        experiment = build_experiment(run)
    model = experiment.model
    for phase in experiment.phases[: state["phase_index"] + 1]:
        phase.prepare(model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"the checkpoint does not fit the model built from its config ({first[:200]})") from None
    model.eval().requires_grad_(False)
    return replace(experiment, model=model)
