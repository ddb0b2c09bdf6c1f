"""``autoenc train``: Hydra composes the config from the command line and runs each job (one run, or
every job of a sweep) as ``autoenc_cli.job`` runs a run; before Hydra writes into a run folder,
``RunFolderGuard`` claims it and refuses one that is not this run's to write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from autoenc_cli import folder_layout as layout
from autoenc_cli.artifacts.run_folder import refuse_unless_new
from autoenc_cli.compose import CONFIG_PATH, HYDRA_VALUE_FLAGS, run_part, with_absolute_paths
from autoenc_cli.errors import UserAbort, UserError
from autoenc_cli.folder_lock import claim_folder
from autoenc_cli.hydra_app import RunComplete, run_hydra_app
from autoenc_cli.job import Job, nothing_started
from autoenc_cli.resume import resume_point, run_folder_of, with_saved_choices
from autoenc_cli.training.records import as_dict

MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})


def main(argv: Sequence[str]) -> None:
    register_plugins()
    flags, overrides = split_flags(argv)
    if not MULTIRUN_FLAGS & set(flags):  # a sweep resumes with the command that started it, as it is
        overrides = with_saved_choices(overrides)
    run_hydra_app(hydra_task, "autoenc train", [*flags, *overrides])


def register_plugins() -> None:
    """Make ``hydra/sweeper=autoenc`` and ``hydra/launcher=stacked`` known to Hydra also where its plugin scan
    cannot list our packages (an editable install's import hook hides ``hydra_plugins.autoenc_*`` from
    ``pkgutil``)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.autoenc_stacked_launcher.stacked_launcher import StackedLauncher
    from hydra_plugins.autoenc_sweeper.sweeper import AutoencSweeper

    for plugin in (AutoencSweeper, StackedLauncher):
        Plugins.instance().class_name_to_class.setdefault(f"{plugin.__module__}.{plugin.__name__}", plugin)


def split_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the overrides, wherever the user typed them: Hydra's parser wants
    the flags first."""
    flags: list[str] = []
    overrides: list[str] = []
    arguments = list(argv)
    while arguments:
        argument = arguments.pop(0)
        if not argument.startswith("-"):
            overrides.append(argument)
            continue
        flags.append(argument)
        if argument in HYDRA_VALUE_FLAGS and arguments:
            flags.append(arguments.pop(0))
    return flags, overrides


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_task(cfg: DictConfig) -> Optional[dict[str, Any]]:
    # A launcher plugin pickles this function by value (its name now holds Hydra's wrapper), so it
    # refers to nothing but ``job``, which pickles by reference.
    return job(cfg)


def job(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """One run, or one job of a sweep (``resume`` continues it; see ``autoenc_cli.resume``)."""
    summary = Job.of_hydra(cfg).run()
    return as_dict(summary) if summary is not None else None


class RunFolderGuard(Callback):
    """Hydra callback: before Hydra writes its files into a run folder, claim it for this process (a
    second process is refused) and refuse one that holds another run, or a resume that cannot go on, so a
    refusal leaves the folder as it was."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) > 0:
            return
        run_dir = Path(config.hydra.run.dir)
        resume = None if config.resume in (None, "") else str(config.resume)
        claim = None
        try:
            if resume is not None:
                check_resume_target(resume, run_dir)
            claim = claim_folder(run_dir, "run", disposable=nothing_started(), appended=(layout.TRAIN_LOG,))
            if resume is None:
                refuse_unless_new(run_dir)
            else:
                check_resume(config, run_dir)
        except UserError as error:
            if claim is not None:
                claim.undo()
                claim.release()
            raise UserAbort(error) from None  # Hydra would turn an Exception into a warning


def check_resume_target(resume: str, run_dir: Path) -> None:
    """``resume=`` names a run folder or a checkpoint of one: not a data file, a sweep or a tune study."""
    path = Path(resume)
    if path.is_file() and path.suffix != layout.CHECKPOINT_SUFFIX:
        raise UserError(
            f"resume='{resume}' is a file but not a checkpoint ({layout.CHECKPOINT_SUFFIX}); give a run folder "
            f"(resume=RUN_DIR) or one of its checkpoints (resume=RUN_DIR/{layout.LAST_CHECKPOINT})"
        )
    if not path.exists():
        raise UserError(
            f"resume='{resume}' does not exist; give a run folder or a checkpoint ({layout.CHECKPOINT_SUFFIX}) of one"
        )
    if run_dir.absolute() != run_folder_of(resume).absolute():
        raise UserError(f"resume={resume} continues in that run's own folder; drop hydra.run.dir={run_dir}")
    if (run_dir / layout.STUDY_DB).is_file():
        raise UserError(f"resume='{resume}' is a tune study; continue it with: autoenc tune resume={resume}")
    if (run_dir / layout.MULTIRUN_YAML).is_file():
        raise UserError(
            f"resume='{resume}' is a sweep; finish it with the command that started it, with -m and resume={resume}"
        )


def check_resume(config: DictConfig, run_dir: Path) -> None:
    """Everything a resume checks (checkpoint, overrides, completeness) before Hydra writes into the folder."""
    overrides = [str(item) for item in config.hydra.overrides.task]
    point = resume_point(with_absolute_paths(run_part(config)), run_dir, overrides, multirun=False)
    if point.cfg is None:
        raise RunComplete(point.complete)
