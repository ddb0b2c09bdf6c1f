"""``hydra/launcher=stacked``: a Hydra launcher that trains a sweep's jobs in one process, stacking the
epochs of jobs whose networks share their shapes (``autoenc_cli.stacking.fit``).

Every job gets what Hydra's basic launcher gives it (its folder, ``.hydra/`` record and ``train.log``)
and writes the files a job of a sequential sweep writes; the jobs share their data set and PCA
baselines, which are the same for the same data and code size.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from autoenc_cli.artifacts.console import ProgressBars, console
from autoenc_cli.artifacts.figure_workers import FigureWorkers
from autoenc_cli.build import build_parts
from autoenc_cli.job import Job, TrainersStop, ending, logging_into, stop_on_signals
from autoenc_cli.lm.run_scoring import LossRecovered
from autoenc_cli.stacking.fit import Member, StackedFit
from autoenc_cli.training.checkpoint import data_fingerprint
from autoenc_cli.training.records import as_dict


@contextmanager
def in_job(job: Job) -> Iterator[None]:
    """A step of a job's life: logged into its train.log, and ended as ``ending`` ends a sweep's job (a
    failure recorded and swallowed: the block is left, and the code after it runs)."""
    with logging_into(job.folder), ending(job):
        yield


def start_job(cfg: DictConfig) -> Any:
    """The task each job runs under Hydra: its start (None: it failed, and says so)."""
    job = Job.of_hydra(cfg)
    with ending(job):
        job.start()
        return job
    return None


class SharedInputs:
    """What jobs on the same data share: the data set (one copy on the device), its fingerprint, the PCA
    baselines, and on an activation cache the language model and its passes that loss recovered compares with."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.fingerprints: dict[int, str] = {}
        self.baselines: dict[Any, Any] = {}
        self.lm_scores = LossRecovered()

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
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        started = [self._start(initial_job_idx + index, overrides) for index, overrides in enumerate(job_overrides)]
        jobs = {number: job for number, (_, job) in enumerate(started, initial_job_idx) if job is not None}
        shared = SharedInputs()
        members = [self._open(number, job, shared) for number, job in jobs.items() if job.config is not None]
        members = [member for member in members if member is not None]
        if members:
            self._fit(members, jobs)
        # Every member's results are started (its figures drawing in a worker), then each is finished; an
        # interruption is recorded for every job before it stops the sweep.
        workers, finishing, aborted = FigureWorkers(), {}, None
        for member in members:  # their SAEs are scored on the language model together, when the first asks
            if member.error is None:
                jobs[member.number].expect_score(shared.lm_scores)
        for member in members:
            try:
                finish = self._results(member, jobs[member.number], shared, workers)
            except BaseException as error:  # noqa: BLE001 - re-raised below, once every job is recorded
                aborted = aborted or error
                continue
            if finish is not None:  # None: it failed, and its folder says so
                finishing[member.number] = finish
        for number, (returned, job) in enumerate(started, initial_job_idx):
            if job is not None:
                returned.return_value = job.complete if job.config is None else None  # complete before: its metrics
            if number in finishing:
                try:
                    with in_job(job):
                        returned.return_value = as_dict(finishing[number]())
                except BaseException as error:  # noqa: BLE001 - re-raised below, once every job is recorded
                    aborted = aborted or error
        if aborted is not None:
            raise self._for_the_sweep(aborted)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returned for returned, _ in started]

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

    def _start(self, number: int, overrides: Sequence[str]) -> tuple[JobReturn, Any]:
        """The job's folder and record as Hydra's basic launcher makes them, and its start."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = number
            sweep_config.hydra.job.num = number
        console.print(f"[bold]#{number}[/] {' '.join(filter_overrides(overrides))}", soft_wrap=True)
        returned = run_job(
            hydra_context=self.hydra_context,
            task_function=start_job,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        return returned, returned.return_value if returned.status == JobStatus.COMPLETED else None

    def _open(self, number: int, job: Job, shared: SharedInputs) -> Optional[Member]:
        """A started job's trainer, built on the data the sweep's jobs share (None: it failed)."""
        with in_job(job):
            job.open(shared.build_parts, shared.fingerprint)
            return Member(job.trainer, job.resume, number)
        return None

    def _fit(self, members: list[Member], jobs: dict[int, Job]) -> None:
        longest = max(members, key=lambda member: jobs[member.number].total_epochs)
        done = longest.resume["epoch"] if longest.resume else 0
        with ProgressBars(jobs[longest.number].total_epochs, completed=done) as bars:
            longest.trainer.callbacks.insert(0, bars)
            with stop_on_signals(TrainersStop(*(member.trainer for member in members))):
                announce = lambda line: console.print(line, soft_wrap=True)  # noqa: E731
                StackedFit(members, self.max_members, self.memory_fraction, announce).run()

    def _results(
        self, member: Member, job: Job, shared: SharedInputs, workers: FigureWorkers
    ) -> Optional[Callable[[], Any]]:
        with in_job(job):
            if member.error is not None:
                raise member.error
            return job.results(member.trainer.result, shared.baselines, member.stack, workers, shared.lm_scores)
        return None  # it failed, and ending(job) recorded it
