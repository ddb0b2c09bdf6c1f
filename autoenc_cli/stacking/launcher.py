"""``hydra/launcher=stacked``: a Hydra launcher that trains a sweep's jobs in one process, stacking the
epochs of jobs whose networks share their shapes (``autoenc_cli.stacking.fit``).

Every job gets what Hydra's basic launcher gives it (its folder, ``.hydra/`` record and ``train.log``)
and writes the files a job of a sequential sweep writes; the jobs share their data set and PCA
baselines, which are the same for the same data and code size.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from autoenc_cli.artifacts.console import ProgressBars, console
from autoenc_cli.artifacts.figure_workers import FigureWorkers
from autoenc_cli.artifacts.run_folder import RunFolder
from autoenc_cli.build import build_parts
from autoenc_cli.stacking.fit import Member, StackedFit
from autoenc_cli.training.checkpoint import data_fingerprint
from autoenc_cli.training.records import as_dict


def prepare_job(cfg: DictConfig) -> Any:
    """The task each job runs under Hydra: everything before training (None: it failed, and says so)."""
    from autoenc_cli.train import PreparedJob, job_outcome

    prepared = PreparedJob.of(cfg)
    with job_outcome(prepared.folder, prepared.multirun):
        prepared.prepare()
        return prepared
    return None


@contextmanager
def logging_into(folder: RunFolder) -> Iterator[None]:
    """Log records go to the job's own train.log (Hydra points the log file at the last job it set up)."""
    root = logging.getLogger()
    files = [handler for handler in root.handlers if isinstance(handler, logging.FileHandler)]
    own = logging.FileHandler(folder.path / "train.log")
    own.setFormatter(files[0].formatter if files else None)
    for handler in files:
        root.removeHandler(handler)
    root.addHandler(own)
    try:
        yield
    finally:
        root.removeHandler(own)
        own.close()
        for handler in files:
            root.addHandler(handler)


class SharedInputs:
    """What jobs on the same data share: the data set (one copy on the device), its fingerprint, the PCA
    baselines."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.fingerprints: dict[int, str] = {}
        self.baselines: dict[Any, Any] = {}

    def build_parts(self, config: Any) -> Any:
        key = (repr(config.data), config.trainer.device)
        parts = build_parts(config, self.data.get(key))
        self.data.setdefault(key, parts.data)
        return parts

    def fingerprint(self, data: Any) -> str:
        key = id(data.train.images)
        if key not in self.fingerprints:
            self.fingerprints[key] = data_fingerprint(data)
        return self.fingerprints[key]


class StackedSweep:
    """The launcher's work (``hydra_plugins.autoenc_stacked_launcher`` is the plugin Hydra instantiates)."""

    def __init__(self, max_members: Optional[int] = None, memory_fraction: float = 0.5) -> None:
        from autoenc_cli.errors import UserAbort, UserError

        if max_members is not None and (not isinstance(max_members, int) or max_members < 1):
            raise UserAbort(UserError(f"hydra.launcher.max_members={max_members}: give a whole number >= 1, or null"))
        if not isinstance(memory_fraction, (int, float)) or not 0 < memory_fraction <= 1:
            raise UserAbort(UserError(f"hydra.launcher.memory_fraction={memory_fraction}: give a number in (0, 1]"))
        self.max_members, self.memory_fraction = max_members, memory_fraction
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from autoenc_cli.train import job_outcome, open_run, stop_on_signals

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._prepare(initial_job_idx + index, overrides) for index, overrides in enumerate(job_overrides)]
        shared, members, runs = SharedInputs(), [], {}
        for number, (returned, prepared) in enumerate(jobs, start=initial_job_idx):
            if prepared is None or prepared.config is None:
                returned.return_value = prepared.complete if prepared is not None else None
                continue
            started = time.perf_counter()
            with logging_into(prepared.folder), job_outcome(prepared.folder, True):
                parts = shared.build_parts(prepared.config)
                run = open_run(
                    parts, prepared.config_yaml, prepared.folder, prepared.resume, prepared.run_id, (),
                    prepared.sweep_dir, started, shared.fingerprint,
                )  # fmt: skip
                runs[number] = run
                members.append(Member(run.trainer, prepared.resume, number))
        if members:
            self._fit(members, runs, stop_on_signals)
        # Every member's results are started (its figures drawing in a worker), then each is finished; an
        # interruption is recorded for every job before it stops the sweep.
        by_number = {member.number: member for member in members}
        closing = [(number, returned, prepared) for number, (returned, prepared) in enumerate(jobs, initial_job_idx)]
        closing = [job for job in closing if job[0] in by_number]
        figure_workers, finishing, aborted = FigureWorkers(), {}, None
        for number, _, prepared in closing:
            try:
                finishing[number] = self._start_closing(
                    runs[number], by_number[number], prepared, shared, figure_workers
                )
            except BaseException as error:  # noqa: BLE001 - re-raised below, once every job is recorded
                aborted = aborted or error
        for number, returned, prepared in closing:
            if number not in finishing:
                continue
            try:
                returned.return_value = self._finish_closing(finishing[number], prepared)
            except BaseException as error:  # noqa: BLE001 - re-raised below, once every job is recorded
                aborted = aborted or error
        if aborted is not None:
            raise self._for_the_sweep(aborted)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returned for returned, _ in jobs]

    def _for_the_sweep(self, aborted: BaseException) -> BaseException:
        """An interruption stopped every job at once: the way on is the sweep's resume, not one job's."""
        from autoenc_cli.errors import TrainingInterrupted, UserAbort

        error = getattr(aborted, "error", None)
        if not isinstance(aborted, UserAbort) or not isinstance(error, TrainingInterrupted):
            return aborted
        signal = str(error).split(" ", 1)[0]
        sweep_dir = self.config.hydra.sweep.dir
        return UserAbort(
            TrainingInterrupted(
                f"{signal}: every job of the stacked sweep saved its checkpoint; continue with the same command "
                f"plus resume={sweep_dir}"
            )
        )

    def _prepare(self, number: int, overrides: Sequence[str]) -> tuple[JobReturn, Any]:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = number
            sweep_config.hydra.job.num = number
        console.print(f"[bold]#{number}[/] {' '.join(filter_overrides(overrides))}", soft_wrap=True)
        returned = run_job(
            hydra_context=self.hydra_context,
            task_function=prepare_job,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        prepared = returned.return_value if returned.status == JobStatus.COMPLETED else None
        return returned, prepared

    def _fit(self, members: list[Member], runs: dict[int, Any], stop_on_signals: Any) -> None:
        longest = max(members, key=lambda member: runs[member.number].total_epochs)
        done = longest.resume["epoch"] if longest.resume else 0
        with ProgressBars(runs[longest.number].total_epochs, completed=done) as bars, ExitStack() as stack:
            longest.trainer.callbacks.insert(0, bars)
            stack.enter_context(stop_on_signals(*(member.trainer for member in members)))
            announce = lambda line: console.print(line, soft_wrap=True)  # noqa: E731
            StackedFit(members, self.max_members, self.memory_fraction, announce).run()

    def _start_closing(
        self, run: Any, member: Member, prepared: Any, shared: SharedInputs, figure_workers: FigureWorkers
    ) -> Optional[Callable[[], Any]]:
        from autoenc_cli.train import job_outcome, start_closing

        with logging_into(prepared.folder), job_outcome(prepared.folder, True):
            if member.error is not None:
                raise member.error
            return start_closing(run, run.trainer.result, shared.baselines, member.stack, figure_workers)
        return None  # it failed, and job_outcome recorded it

    def _finish_closing(self, finish: Optional[Callable[[], Any]], prepared: Any) -> Optional[dict[str, Any]]:
        from autoenc_cli.train import job_outcome

        with logging_into(prepared.folder), job_outcome(prepared.folder, True):
            return as_dict(finish()) if finish is not None else None
        return None
