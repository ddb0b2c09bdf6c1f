"""Multirun: Hydra's sweep over every combination of the values given, each job's config composed once and
checked whole before the first job starts (``Sweep``, the work of the ``hydra/sweeper=autoenc`` plugin), its
folder claimed and checked, and the comparison written at its end (``SweepCallback``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_loader import ConfigLoader
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.errors import UserAbort, UserError
from autoenc_cli.folder_layout import METRICS_JSON, MULTIRUN_YAML, SUMMARY_CSV, SweepLayout


class Sweep:
    """The sweeper's work (``hydra_plugins.autoenc_sweeper`` is the plugin Hydra instantiates): the jobs
    Hydra's basic sweeper would run (``hydra.sweeper.params`` and the command's values, every combination,
    in batches of ``max_batch_size``), each composed and checked before the first starts (the first bad
    job is a one-line error), then launched by the configured launcher, which gets each config as composed
    here instead of composing it again."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None) -> None:
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise UserAbort(UserError(f"hydra.sweeper.max_batch_size={max_batch_size}: give a whole number >= 1"))
        self.max_batch_size, self.params = max_batch_size, dict(params or {})
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins
        from hydra.types import HydraContext

        self.config, self.loader = config, ComposedOnce(hydra_context.config_loader, self.composed)
        context = HydraContext(config_loader=self.loader, callbacks=hydra_context.callbacks)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=task_function, config=config
        )

    def run(self, arguments: list[str]) -> list[Sequence[Any]]:
        from autoenc_cli.compose import sweep_jobs

        jobs = sweep_jobs([*(f"{key}={value}" for key, value in self.params.items()), *arguments], self.loader)
        for job in jobs:
            self.composed[tuple(job)] = self.checked(job)
        sweep = SweepLayout(Path(str(self.config.hydra.sweep.dir)))
        sweep.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep.multirun_yaml)
        returns, size = [], self.max_batch_size or max(len(jobs), 1)
        for start in range(0, len(jobs), size):
            results = self.launcher.launch(jobs[start : start + size], initial_job_idx=start)
            for result in results:
                _ = result.return_value  # as Hydra's sweepers do: a job's unexpected error is raised here
            returns.append(results)
        return returns

    def checked(self, job: list[str]) -> DictConfig:
        """The job's config, composed by Hydra's loader and checked whole; a mistake is one line naming the job."""
        from autoenc_cli.compose import run_config
        from autoenc_cli.error_report import one_line_or_none

        try:
            cfg = self.loader.load_sweep_config(self.config, job)
            run_config(job, cfg)
            return cfg
        except Exception as error:  # noqa: BLE001 - a user's mistake (also Hydra's, composing) becomes one line
            message = one_line_or_none(error)
            if message is None:
                raise
            raise UserAbort(UserError(f"sweep job [{' '.join(job)}]: {message}")) from None


class ComposedOnce(ConfigLoader):
    """Hydra's config loader, giving each job of the sweep a copy of its config as composed for its check;
    everything else, and any other job, is the loader's own."""

    def __init__(self, loader: ConfigLoader, composed: dict[tuple[str, ...], DictConfig]) -> None:
        self.loader, self.composed = loader, composed

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        found = self.composed.get(tuple(sweep_overrides))
        if found is None:
            return self.loader.load_sweep_config(master_config, list(sweep_overrides))
        return copy.deepcopy(found)  # a launcher sets the job's number in it

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> Any:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)


def check_sweep_folder(sweep_dir: Any, resume: Any, overrides: list[str]) -> None:
    """A new sweep gets a new folder; ``resume=SWEEP_DIR`` must repeat the command that started it (a
    job is matched to its folder by number, so other values would finish other jobs' records)."""
    from autoenc_cli.artifacts.run_folder import refuse_unless_new
    from autoenc_cli.resume import without_resume

    if resume in (None, ""):
        refuse_unless_new(sweep_dir, what="sweep")
        return
    record = SweepLayout(sweep_dir).multirun_yaml
    if not record.is_file():
        raise UserError(f"resume={resume}: '{sweep_dir}' holds no sweep (no {MULTIRUN_YAML})")
    started_with = [str(item) for item in OmegaConf.load(record).hydra.overrides.task]
    if without_resume(started_with) != without_resume(overrides):
        raise UserError(
            f"'{sweep_dir}' was started with [{' '.join(without_resume(started_with))}]; resume a sweep with the "
            "command that started it plus resume=, nothing else changed"
        )


class SweepCallback(Callback):
    """Hydra callback for multiruns: the sweep folder claimed and checked before anything is written there,
    and the comparison of its jobs at its end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from autoenc_cli.folder_lock import claim_folder

        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        claim = None
        try:
            # Held for the sweep's life: a second process on this folder (a new sweep or a resume) is refused.
            claim = claim_folder(Path(config.hydra.sweep.dir), "sweep", disposable=(MULTIRUN_YAML,))
            check_sweep_folder(Path(config.hydra.sweep.dir), config.resume, [str(item) for item in overrides])
        except UserError as error:
            if claim is not None:
                claim.undo()
                claim.release()
            # Hydra turns a callback's Exception into a warning and carries on; abort the sweep instead.
            raise UserAbort(error) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from autoenc_cli.artifacts.console import console
        from autoenc_cli.artifacts.sweep_report import write_report
        from autoenc_cli.loggers import finish_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = SweepLayout(sweep_dir)
        rows, table = write_report([sweep_dir], sweep_dir)
        finish_sweep(sweep_dir)  # after the report: a tracker's sweep record keeps it
        console.print(table)
        console.print(f"sweep summary: [bold]{sweep.summary_csv}[/]", soft_wrap=True)
        if sweep.gallery_html.is_file():
            console.print(f"gallery: [bold]{sweep.gallery_html}[/]", soft_wrap=True)
        unfinished = [f"{row['run']} ({row['label']})" for row in rows if row["status"] != "completed"]
        if unfinished:
            raise UserAbort(
                UserError(
                    f"{len(unfinished)} of {len(rows)} sweep jobs did not complete: {', '.join(unfinished)}; "
                    f"their errors are in each job's {METRICS_JSON} ({SUMMARY_CSV} lists every job); finish them with "
                    f"the same command plus resume={sweep_dir}"
                )
            )
