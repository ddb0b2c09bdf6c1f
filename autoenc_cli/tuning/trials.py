"""One trial: its config composed and checked, an ordinary run folder, ``train()`` with a callback that
reports every epoch to Optuna; and the workers (threads) that run trials until the budget is used."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autoenc_cli.artifacts.console import console
from autoenc_cli.artifacts.run_folder import RunFolder
from autoenc_cli.errors import RunPruned, TrainingInterrupted
from autoenc_cli.job import TRIAL, Job, StopRequest, thread_logging_into
from autoenc_cli.training.callbacks import Callback, EpochEnd, PhaseStart, StepEnd
from autoenc_cli.training.records import EpochRecord
from autoenc_cli.tuning.search_space import Param
from autoenc_cli.tuning.settings import Objective
from autoenc_cli.tuning.study import owner, trials_used

log = logging.getLogger("autoenc")


@dataclass
class StudyRun:
    """What every worker shares."""

    study: Any
    study_dir: Path
    base: list[str]  # the train overrides every trial starts from
    params: dict[str, Param]
    objectives: list[Objective]
    prune_on: Optional[str]  # the per-epoch metric the pruner watches; None: no pruning
    warmup_epochs: int
    trials: int
    deadline: Optional[float]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[BaseException] = field(default_factory=list)
    started: int = 0  # trials this process started
    failed: list[str] = field(default_factory=list)  # "NUMBER (overrides)" of the trials that failed here


class StudyStop(StopRequest):
    """Ctrl-C or SIGTERM stops the study: running trials stop after their current step (checkpoint saved,
    params queued again) and no new trial starts; a second one stops at once."""

    def __init__(self, run: StudyRun) -> None:
        self.run = run

    def request(self, signal_name: str) -> None:
        self.run.stop.set()
        console.print("[yellow]stopping the study[/] after the running trials' current step (again: stop at once)")

    def requested(self) -> bool:
        return False  # the study is stopped once, by the signal received first (a worker's error stops it too)


class TrialReporter(Callback):
    """Reports the objective after every epoch (``trial.report``) and stops the run when the pruner says
    so (``RunPruned``: the trial is recorded as pruned) or when the study is asked to stop (Ctrl-C: the run
    is interrupted, checkpoint saved).
    No trial is pruned before ``warmup_epochs`` nor after its last epoch (nothing left to save: it completes)."""

    def __init__(self, trial: Any, metric: Optional[str], warmup_epochs: int, stop: threading.Event) -> None:
        self.trial, self.metric, self.warmup_epochs, self.stop = trial, metric, warmup_epochs, stop
        self.last: Optional[EpochRecord] = None
        self.final_epoch: Optional[int] = None  # known when the last phase starts

    def on_phase_start(self, event: PhaseStart) -> None:
        if event.index == event.phase_count - 1:
            self.final_epoch = self.epochs + event.epochs

    def on_step(self, event: StepEnd) -> None:
        if self.stop.is_set():
            raise TrainingInterrupted(f"the study stopped in epoch {self.epochs + 1}, by step {event.step}")

    @property
    def epochs(self) -> int:
        return self.last.epoch if self.last else 0

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.last = record = event.record
        value = getattr(record, self.metric) if self.metric else None
        if value is not None and math.isfinite(value):
            self.trial.report(value, record.epoch)
            last = self.final_epoch is not None and record.epoch >= self.final_epoch
            if record.epoch > self.warmup_epochs and not last and self.trial.should_prune():
                raise RunPruned(f"pruned after epoch {record.epoch} ({self.metric} {value:.6g})")
        if self.stop.is_set():
            raise TrainingInterrupted(f"the study stopped after epoch {record.epoch}")


@dataclass
class Outcome:
    state: str  # complete | pruned | failed | interrupted
    values: Optional[list[float]] = None
    message: str = ""


def sampled_overrides(run: StudyRun, trial: Any) -> list[str]:
    return [run.params[key].override(value) for key, value in trial.params.items()]


def run_trial(run: StudyRun, trial: Any) -> Outcome:
    """The trial as a job of the study (``autoenc_cli.job``), in its own run folder, with its train.log."""

    sampled = sampled_overrides(run, trial)
    overrides = [*run.base, *sampled]
    folder = RunFolder(run.study_dir / str(trial.number))
    console.rule(f"trial {trial.number}: {' '.join(sampled)}")
    folder.write_hydra_record(overrides)  # what the trial is, whatever becomes of it
    reporter = TrialReporter(trial, run.prune_on, run.warmup_epochs, run.stop)
    job = Job(
        folder,
        lambda: trial_config(folder, overrides),
        overrides,
        part_of=TRIAL,
        sweep_dir=run.study_dir,
        callbacks=[reporter],
    )
    with thread_logging_into(folder):
        try:
            summary = job.run()
        except RunPruned as pruned:
            return Outcome("pruned", message=str(pruned))
        except TrainingInterrupted as interrupted:
            return Outcome("interrupted", message=str(interrupted))
    if summary is None:  # failed: metrics.json says why
        return Outcome("failed", message=folder.read_metrics().get("error", ""))
    values = [getattr(summary, objective.name) for objective in run.objectives]
    if any(value is None or not math.isfinite(value) for value in values):
        missing = [o.name for o, v in zip(run.objectives, values) if v is None or not math.isfinite(v)]
        return Outcome("failed", message=f"the run has no finite {', '.join(missing)}")
    return Outcome("complete", values=[float(value) for value in values])


def trial_config(folder: RunFolder, overrides: list[str]) -> Any:
    """The trial's config, as ``autoenc train OVERRIDES`` composes it, kept in its .hydra/ record."""
    from autoenc_cli.compose import compose, with_absolute_paths

    cfg = with_absolute_paths(compose("train", overrides))
    folder.write_hydra_record(overrides, cfg)
    return cfg


def tell(run: StudyRun, trial: Any, outcome: Outcome) -> None:
    from optuna.trial import TrialState

    study, number = run.study, trial.number
    if outcome.state == "complete":
        study.tell(trial, outcome.values)
        shown = ", ".join(f"{o.name} {v:.6g}" for o, v in zip(run.objectives, outcome.values))
        console.print(f"[green]trial {number} complete[/]: {shown}", soft_wrap=True)
        return
    if outcome.message:
        trial.set_user_attr("error" if outcome.state == "failed" else outcome.state, outcome.message)
    if outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        console.print(f"[yellow]trial {number} {outcome.message}[/]", soft_wrap=True)
        return
    study.tell(trial, state=TrialState.FAIL)
    if outcome.state == "interrupted":  # runs again (as a new trial) when the study continues
        study.enqueue_trial(trial.params, user_attrs={"retry_of": number})
        console.print(f"[yellow]trial {number} interrupted[/]: {outcome.message}; its params are queued again")
    else:
        run.failed.append(f"{number} ({' '.join(sampled_overrides(run, trial))})")
        console.print(f"[red]trial {number} failed[/]: {outcome.message}", soft_wrap=True)


def next_trial(run: StudyRun) -> Any:
    """The next trial to train, or None when the study is done, stopped or out of time."""
    with run.lock:
        if run.stop.is_set() or run.errors or (run.deadline is not None and time.monotonic() > run.deadline):
            return None
        if trials_used(run.study) >= run.trials:
            return None
        trial = run.study.ask({key: param.distribution() for key, param in run.params.items()})
        for key, value in owner().items():  # a crashed process's trial is recognised on resume
            trial.set_user_attr(key, value)
        run.started += 1
        return trial


def work(run: StudyRun) -> None:
    try:
        while (trial := next_trial(run)) is not None:
            tell(run, trial, run_trial(run, trial))
    except BaseException as error:  # noqa: BLE001 - handed to the main thread, which re-raises it
        run.errors.append(error)
        run.stop.set()


def run_workers(run: StudyRun, n_jobs: int) -> None:
    """``n_jobs`` threads take trials until the budget is used; the calling thread waits (and takes Ctrl-C)."""
    workers = [threading.Thread(target=work, args=(run,), name=f"tune-worker-{i}", daemon=True) for i in range(n_jobs)]
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(min(level, logging.INFO))  # each train.log keeps what Hydra's job logging would
    try:
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            for worker in workers:
                worker.join(timeout=0.2)
    finally:
        root.setLevel(level)
    if run.errors:
        raise run.errors[0]
