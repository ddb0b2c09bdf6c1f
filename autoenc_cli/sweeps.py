"""Multirun support: check every job's config before the first job starts."""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.errors import UserAbort, UserError


def sweep_jobs(task_overrides: list[str]) -> list[list[str]]:
    """Expand sweep overrides (``k=5,16,32``, ``'experiment=glob(tutorial_*)'``) into one override list per
    job, as the basic sweeper does; a glob needs the config loader, to list the group's options."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = GlobalHydra.instance()
    loader = hydra.config_loader() if hydra.is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(task_overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


# Each job's config as the up-front check composed it (about 0.2 s a job), for whoever composes the same
# job again in this sweep: Hydra's check of the batch and the launcher (the basic one or the stacked one).
# Filled when a sweep starts, emptied when it ends.
_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def composed_job(
    load_sweep_config: Callable[[DictConfig, list[str]], DictConfig],
    master_config: DictConfig,
    sweep_overrides: Sequence[str],
) -> DictConfig:
    """A job's config (``ConfigLoader.load_sweep_config``, whose arguments follow the first), composed once
    per sweep; each caller gets its own copy."""
    key = tuple(sweep_overrides)
    if key not in _COMPOSED:
        _COMPOSED[key] = load_sweep_config(master_config, list(sweep_overrides))
    return copy.deepcopy(_COMPOSED[key])


def compose_each_job_once(loader: Any) -> None:
    """Route ``loader``'s job compositions through ``composed_job`` (once per loader)."""
    if not isinstance(loader.load_sweep_config, functools.partial):
        loader.load_sweep_config = functools.partial(composed_job, loader.load_sweep_config)


def validate_jobs(master: DictConfig, jobs: list[list[str]]) -> None:
    """Compose each job's config and check it against the schemas; the first bad job is the error."""
    from hydra.core.global_hydra import GlobalHydra

    from autoenc_cli.error_report import one_line_or_none
    from autoenc_cli.schema.check import check_shorthands
    from autoenc_cli.schema.resolve import resolve

    _COMPOSED.clear()
    loader = GlobalHydra.instance().config_loader()  # the sweeper's and the launcher's
    compose_each_job_once(loader)
    for overrides in jobs:
        try:
            check_shorthands(overrides)
            job = loader.load_sweep_config(master, overrides)
            resolve(OmegaConf.masked_copy(job, [key for key in job if key != "hydra"]))  # hydra's node needs a run
        except Exception as error:  # noqa: BLE001 - a user's mistake (also Hydra's, composing) becomes one line
            message = one_line_or_none(error)
            if message is None:
                raise
            raise UserError(f"sweep job [{' '.join(overrides)}]: {message}") from None


def check_sweep_folder(sweep_dir: Any, resume: Any, overrides: list[str]) -> None:
    """A new sweep gets a new folder; ``resume=SWEEP_DIR`` must repeat the command that started it (a
    job is matched to its folder by number, so other values would finish other jobs' records)."""
    from autoenc_cli.artifacts.run_folder import refuse_unless_new
    from autoenc_cli.resume import without_resume

    if resume in (None, ""):
        refuse_unless_new(sweep_dir, what="sweep")
        return
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        raise UserError(f"resume={resume}: '{sweep_dir}' holds no sweep (no multirun.yaml)")
    started_with = [str(item) for item in OmegaConf.load(record).hydra.overrides.task]
    if without_resume(started_with) != without_resume(overrides):
        raise UserError(
            f"'{sweep_dir}' was started with [{' '.join(without_resume(started_with))}]; resume a sweep with the "
            "command that started it plus resume=, nothing else changed"
        )


class SweepCallback(Callback):
    """Hydra callback for multiruns: a bad value in the last job fails in a second, not after hours."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pathlib import Path

        from autoenc_cli.folder_lock import claim_folder

        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        claim = None
        try:
            # Held for the sweep's life: a second process on this folder (a new sweep or a resume) is refused.
            claim = claim_folder(Path(config.hydra.sweep.dir), "sweep", disposable=("multirun.yaml",))
            check_sweep_folder(Path(config.hydra.sweep.dir), config.resume, [str(item) for item in overrides])
            validate_jobs(config, sweep_jobs([str(item) for item in overrides]))
        except UserError as error:
            if claim is not None:
                claim.undo()
                claim.release()
            # Hydra turns a callback's Exception into a warning and carries on; abort the sweep instead.
            raise UserAbort(error) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pathlib import Path

        from autoenc_cli.artifacts.console import console
        from autoenc_cli.artifacts.sweep_report import write_report
        from autoenc_cli.loggers import finish_sweep

        _COMPOSED.clear()
        sweep_dir = Path(config.hydra.sweep.dir)
        rows, table = write_report([sweep_dir], sweep_dir)
        finish_sweep(sweep_dir)  # after the report: the MLflow parent run keeps it
        console.print(table)
        console.print(f"sweep summary: [bold]{sweep_dir / 'summary.csv'}[/]", soft_wrap=True)
        if (sweep_dir / "gallery.html").is_file():
            console.print(f"gallery: [bold]{sweep_dir / 'gallery.html'}[/]", soft_wrap=True)
        unfinished = [f"{row['run']} ({row['label']})" for row in rows if row["status"] != "completed"]
        if unfinished:
            raise UserAbort(
                UserError(
                    f"{len(unfinished)} of {len(rows)} sweep jobs did not complete: {', '.join(unfinished)}; "
                    "their errors are in each job's metrics.json (summary.csv lists every job); finish them with "
                    f"the same command plus resume={sweep_dir}"
                )
            )
