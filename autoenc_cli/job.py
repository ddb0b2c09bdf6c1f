"""A run's life, start to end, for every command that trains: ``autoenc train``, each job of a sweep
(any launcher, the stacked one included) and each trial of ``autoenc tune``.

    with ending(job):               how it ends: completed, failed, pruned or interrupted, recorded
        job.start()                 the composed config checked whole, the folder started (or continued)
        job.open()                  data and model built, loggers started, the folder's writer and trainer set
        result = job.fit()          the training loop (a stacked sweep trains its jobs' trainers together)
        job.results(result)()       metrics.json, PCA baseline, figures, report.html, the loggers' last records

``Job.run`` is that sequence; the stacked launcher calls the same steps for its jobs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf

from autoenc_cli import folder_layout as layout
from autoenc_cli.artifacts.console import ProgressBars, console, metrics_table
from autoenc_cli.artifacts.figure_workers import FigureWorkers
from autoenc_cli.artifacts.html_report import write_html_report
from autoenc_cli.artifacts.run_figures import run_figure_drawings
from autoenc_cli.artifacts.run_folder import RunFolder, RunFolderWriter
from autoenc_cli.baselines.pca import run_pca_baseline
from autoenc_cli.build import build_parts
from autoenc_cli.compose import run_config, with_absolute_paths
from autoenc_cli.errors import DataError, RunPruned, TrainingInterrupted, UserAbort, UserError
from autoenc_cli.folder_lock import held, put_back, remove_if_nothing_started
from autoenc_cli.lm.run_scoring import LossRecovered, RunSAE, held_out, with_score
from autoenc_cli.loggers.base import run_folder_entries
from autoenc_cli.loggers.run_loggers import RunLoggers
from autoenc_cli.resume import RESUME_OVERRIDABLE, resume_point
from autoenc_cli.sparsity.base import collapse_note
from autoenc_cli.training.callbacks import Callback
from autoenc_cli.training.checkpoint import data_fingerprint, model_fingerprint
from autoenc_cli.training.distributed import shutdown as shutdown_distributed
from autoenc_cli.training.likelihood import Likelihood, likelihood, with_likelihood
from autoenc_cli.training.loop import FitResult, Trainer
from autoenc_cli.training.metrics import psnr
from autoenc_cli.training.parts import RunParts
from autoenc_cli.training.records import RunSummary, as_dict, carried

log = logging.getLogger("autoenc")

# What a job is part of: it decides how a failure or an interruption ends the job (``ending``).
RUN, SWEEP_JOB, TRIAL = "run", "sweep job", "trial"


@dataclass
class Job:
    """One run: where it writes, the config it was composed with, and, as it goes, what it has built."""

    folder: RunFolder
    # Composed, not yet checked; or how to compose it when the job starts (a tune trial: a mistake in its
    # config is then the trial's failure, recorded in its folder).
    cfg: Union[DictConfig, Callable[[], DictConfig]]
    overrides: list[str]  # the command's, as given (the check and a resume compare them)
    part_of: str = RUN  # RUN, SWEEP_JOB or TRIAL: how a failure or an interruption ends it (``ending``)
    sweep_dir: Optional[Path] = None  # the sweep or study it belongs to (loggers group its runs there)
    callbacks: Sequence[Callback] = ()  # after the folder's writer (tune reports each epoch to its trial)
    started: float = 0.0  # when it opened (wall_seconds counts from here)
    # set by start():
    config: Any = None  # the typed, checked TrainConfig; None: nothing to train (``complete`` says why)
    config_yaml: str = ""
    resume: Optional[dict[str, Any]] = None
    run_id: Optional[str] = None
    complete: Optional[dict[str, Any]] = None  # the metrics of a job that had already completed
    # set by open():
    parts: Optional[RunParts] = None
    loggers: Optional[RunLoggers] = None
    trainer: Optional[Trainer] = None

    @classmethod
    def of_hydra(cls, cfg: DictConfig) -> "Job":
        """The job Hydra is running (``autoenc train``, or a job of its sweep), in the folder Hydra made."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_config = HydraConfig.get()
        in_sweep = hydra_config.mode == RunMode.MULTIRUN
        return cls(
            folder=RunFolder(Path(hydra_config.runtime.output_dir)),
            cfg=cfg,
            overrides=list(hydra_config.overrides.task),
            part_of=SWEEP_JOB if in_sweep else RUN,
            sweep_dir=Path(hydra_config.sweep.dir) if in_sweep else None,
        )

    @property
    def in_sweep(self) -> bool:
        return self.part_of != RUN

    def run(self) -> Optional[RunSummary]:
        """The whole life. None: the job failed, and its folder says so (a single run's error is raised)."""
        with ending(self):
            if not self.start():
                return RunSummary.from_dict(self.complete or {})
            self.open()
            if not self.parts.world.is_main:
                self.trainer.fit(self.resume)
                return RunSummary(status="completed")
            return self.results(self.fit())()
        return None

    def start(self) -> bool:
        """Check the config whole and start the folder (or find where it continues); False: nothing to train."""
        if callable(self.cfg):
            self.cfg = self.cfg()
        point = resume_point(with_absolute_paths(self.cfg), self.folder.path, self.overrides, self.in_sweep)
        if point.cfg is None:
            console.print(point.complete, soft_wrap=True)
            self.complete = self.folder.read_metrics()
            return False
        self.config = run_config(self.overrides, point.cfg)
        self.config_yaml = OmegaConf.to_yaml(point.cfg)
        # A sweep being resumed restarts its jobs that never trained in their own folders.
        fresh = point.state is None and not self.cfg.resume
        identity = self.folder.start(self.config_yaml) if fresh else self.folder.continued(self.config_yaml)
        self.resume, self.run_id = point.state, identity["run_id"]
        return True

    def open(
        self,
        build: Optional[Callable[[Any], RunParts]] = None,
        data_fingerprint_of: Callable[[Any], str] = data_fingerprint,
    ) -> None:
        """Build the run (``build``: as a stacked sweep builds its jobs, on the data they share), check a
        resumed checkpoint's data, announce it, start its loggers and set up its trainer with the folder's
        writer."""
        self.started = time.perf_counter()
        self.parts = parts = (build or build_parts)(self.config)
        if not parts.world.is_main:  # under torchrun only rank 0 shows progress and writes files
            self.trainer = Trainer(parts)
            return
        fingerprint = {
            "run_id": self.run_id,
            "model": model_fingerprint(self.config, parts.data.input_shape),
            "data": data_fingerprint_of(parts.data),
        }
        trained_on = ((self.resume or {}).get("fingerprint") or {}).get("data")
        if trained_on not in (None, fingerprint["data"]):
            raise DataError(
                f"the run's data ({self.config.data.name}) changed since the run trained (other images, labels or "
                "another split): continuing would train and validate on a different split; restore the data to resume"
            )
        announce(parts, self.folder, self.resume)
        self.loggers = RunLoggers.build(parts, self.folder.path, self.run_id, self.sweep_dir, self.resume)
        logged_runs = self.loggers.start()  # before the first checkpoint, which keeps their ids for a resume
        writer = RunFolderWriter(self.folder, self.config_yaml, fingerprint, logged_runs)
        # Loggers before the writer: an epoch is checkpointed only once it is logged (a resume re-logs, never skips).
        self.trainer = Trainer(parts, [*([self.loggers] if self.loggers.loggers else []), writer, *self.callbacks])

    @property
    def total_epochs(self) -> int:
        return sum(phase.epochs for phase in self.parts.phases)

    def fit(self) -> FitResult:
        """Train to the end, with a progress bar; Ctrl-C stops after the current step (checkpoint saved)."""
        done = self.resume["epoch"] if self.resume else 0
        with ProgressBars(self.total_epochs, completed=done) as bars, stop_on_signals(TrainersStop(self.trainer)):
            self.trainer.callbacks.insert(0, bars)
            return self.trainer.fit(self.resume)

    def results(
        self,
        result: FitResult,
        pca_baselines: Optional[dict] = None,
        stack: Optional[str] = None,
        workers: Optional[FigureWorkers] = None,
        lm_scores: Optional[LossRecovered] = None,
    ) -> Callable[[], RunSummary]:
        """The end of a finished fit, in two halves so several runs' figures can draw at once: this call
        writes metrics.json (the run is complete from here on) and the PCA baseline and starts the figures
        (in ``workers``) and, for a run on an activation cache, scores it on the language model (loss
        recovered) while they draw; the call it returns waits for them, then writes the notes, the report and
        the loggers' last records. ``pca_baselines`` keeps baselines for other runs on the same data and
        ``lm_scores`` the language model and its SAE-free passes for other runs on the same cache (a stacked
        sweep's); ``stack`` names the stack the run trained in. A figure, the report or the scoring failing
        never un-completes a run; a Ctrl-C now waits for the results (a second one stops at once)."""
        folder, parts, trainer = self.folder, self.parts, self.trainer
        with self.writing_results():
            summary = self.summary(result, stack)
            folder.write_metrics(summary)
            if parts.config.trainer.pca_baseline:
                code_dim = trainer.network.code_dim
                baseline = optional("PCA baseline", lambda: run_pca_baseline(parts, code_dim, pca_baselines))
                if baseline is not None:
                    summary.pca_val_mse, summary.pca_val_mse_by_k = baseline.mse, baseline.mse_by_k
            if trainer.network.variational and parts.config.trainer.nll_samples:
                optional("ELBO and NLL", lambda: with_likelihood(summary, self.likelihood()))
            drawing, input_notes = None, []
            if parts.config.trainer.figures:
                drawings, input_notes = run_figure_drawings(
                    parts, trainer.network, folder.layout.figures, result.history, result.final_codes
                )
                drawing = (workers or FigureWorkers(in_process=True)).submit(drawings)
            scores = lm_scores if lm_scores is not None else LossRecovered()
            sae = optional("loss recovered", lambda: self.scored_sae(scores))
            if sae is not None:
                with_score(summary, optional("loss recovered", lambda: scores.score(sae)))

        def finish() -> RunSummary:
            with self.writing_results():
                written, drawing_notes = drawing() if drawing is not None else ([], [])
                if parts.config.trainer.figures:
                    summary.figures = [path.name for path in written]
                warnings = say_notes(health_notes(result, parts.config, trainer.network), "warning")
                summary.notes = warnings + say_notes(input_notes + drawing_notes) or None
                summary.wall_seconds = time.perf_counter() - self.started
                folder.write_metrics(summary)
                optional(layout.REPORT_HTML, lambda: write_html_report(folder.path))
                self.loggers.finish(
                    summary, [folder.layout.figures / name for name in summary.figures or []], trainer.global_step
                )
            if trainer.stop_requested:
                console.print(
                    f"[yellow]note[/]: {trainer.stop_requested} came after training ended; the run finished writing"
                )
            console.print(metrics_table(as_dict(summary), title="final metrics"))
            console.print(f"run folder: [bold]{folder.path}[/]", soft_wrap=True)
            return summary

        return finish

    def likelihood(self) -> Likelihood:
        """The variational network's ELBO, NLL and active units on the validation split."""
        config, loss = self.parts.config, self.trainer.objective.reconstruction
        batch_size, samples, seed = config.trainer.eval_batch_size, config.trainer.nll_samples, config.seed + 3
        return likelihood(self.trainer.network, loss, self.parts.data.val, batch_size, samples, seed)

    def scored_sae(self, scores: LossRecovered) -> Optional[RunSAE]:
        """The run's network as the SAE that loss recovered splices into the language model its activation
        cache came from; None for a run on other data, or with data.heldout_tokens=0."""
        heldout = held_out(self.config.data, self.parts.device)
        if heldout is None:
            return None
        data, fingerprint = self.config.data, self.parts.data.fingerprint
        normalisation = lambda: scores.normalisation(data, fingerprint)  # noqa: E731
        return RunSAE(str(self.folder.path), heldout, self.trainer.network, normalisation)

    def expect_score(self, scores: LossRecovered) -> None:
        """Tell ``scores`` that this run will ask for its loss recovered (a stacked sweep scores its jobs'
        SAEs together). A failure here is left to the run's own results, which say why."""
        with suppress(Exception):
            scores.expect(self.scored_sae(scores))

    def summary(self, result: FitResult, stack: Optional[str]) -> RunSummary:
        last, parts = result.history[-1], self.parts
        return carried(
            last,
            RunSummary,
            status="completed",
            val_psnr=psnr(last.val_mse),  # of the last epoch: history.csv keeps no psnr
            best_val_loss=result.best_val_loss,
            best_epoch=result.best_epoch,
            epochs=len(result.history),
            code_dim=self.trainer.network.code_dim,
            num_parameters=count_parameters(parts.model),
            train_seconds=result.train_seconds,
            samples_per_second=result.samples_per_second,
            device=str(parts.device),
            seed=parts.config.seed,
            l0_threshold=result.final_codes.threshold if result.final_codes is not None else None,
            stack=stack,
        )

    @contextmanager
    def writing_results(self) -> Iterator[None]:
        with stop_on_signals(TrainersStop(self.trainer)):
            try:
                yield
            except BaseException:
                self.loggers.on_interrupt(None)  # the trackers' runs end as interrupted, not running
                raise


@contextmanager
def ending(job: Job) -> Iterator[None]:
    """How a job ends, written in its folder. A single run reports a user mistake as one line (its folder
    put back as it was when nothing started there); a sweep's job or a study's trial that fails is
    recorded (``fail``) and the others go on; a pruned trial is recorded with its last epoch's numbers; an
    interruption stops the sweep, saying how to continue (a study says so itself)."""
    folder = job.folder
    try:
        try:
            yield
        finally:
            shutdown_distributed()
            if int(os.environ.get("RANK", "0")) > 0:  # a torchrun rank's scratch folder (see hydra_app)
                shutil.rmtree(folder.path, ignore_errors=True)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        if not kept_stopped_run(folder):
            discard_unstarted(folder)
        elif not job.in_sweep:  # a sweep says how to finish the sweep
            raise UserAbort(
                TrainingInterrupted(
                    f"stopped at once by a second Ctrl-C; the last checkpoint is kept; continue with: "
                    f"autoenc train resume={folder.path}"
                )
            ) from None
        raise
    except TrainingInterrupted as error:
        if job.part_of == TRIAL:  # the study continues it
            raise
        raise UserAbort(
            TrainingInterrupted(f"{error}: checkpoint saved; continue with: autoenc train resume={folder.path}")
        ) from None
    except RunPruned as pruned:
        history = job.trainer.result.history if job.trainer is not None else []
        given = dict(status="pruned", stopped=str(pruned), epochs=len(history))
        record(folder, carried(history[-1], RunSummary, **given) if history else RunSummary(**given))
        raise
    except UserError as error:
        log.error("stopped: %s", error)  # in train.log, unless the folder is put back as it was
        if not job.in_sweep:
            discard_unstarted(folder)
            raise UserAbort(error) from None
        fail(job, error)
    except Exception as error:
        log.exception("failed")
        if not job.in_sweep:
            raise
        fail(job, error)


def fail(job: Job, error: Exception) -> None:
    """Record a failed job of a sweep or study. A sweep's job: a user's mistake as its message (the folder
    put back first when nothing started there), a bug with its kind. A study's trial: its folder kept (what
    was asked, its log), the error with its kind, or as a mistake in its config, and its page written."""
    folder, mistake = job.folder, isinstance(error, UserError)
    if job.part_of == TRIAL:
        unchecked = mistake and job.config is None
        record(folder, RunSummary(status="failed", error=f"config check: {error}" if unchecked else kind_and(error)))
        return
    if mistake:
        discard_unstarted(folder)
    message = str(error) if mistake else kind_and(error)
    console.print(f"[red]job failed[/]: {message}", soft_wrap=True)
    folder.write_metrics(RunSummary(status="failed", error=message))


def kind_and(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def record(folder: RunFolder, summary: RunSummary) -> None:
    """metrics.json says how a trial ended (failed, pruned), and its page shows it."""
    folder.write_metrics(summary)
    optional(layout.REPORT_HTML, lambda: write_html_report(folder.path))


def kept_stopped_run(folder: RunFolder) -> bool:
    """Whether a run stopped at once has a checkpoint to continue from; if so, its metrics.json says
    interrupted (written here when it stopped before the loop could say so). False when it has none, or
    had finished training."""
    status = folder.read_metrics().get("status")
    if status == "completed" or not folder.layout.last_checkpoint.is_file():
        return False
    if status != "interrupted":  # stopped while writing a checkpoint
        folder.write_metrics(RunSummary(status="interrupted", stopped="at once by a second Ctrl-C", signal="SIGINT"))
    return True


def discard_unstarted(folder: RunFolder) -> None:
    """Put back a folder in which no training started: the folder this process claimed for the run as it
    was when claimed (a new one removed, a resumed one's .hydra/resumed entry and train.log lines undone);
    a sweep job's folder, which holds only what Hydra and the job wrote, removed."""
    claim = held(folder.path)
    if claim is None:
        remove_if_nothing_started(folder.path, nothing_started())
    else:
        put_back(claim)


def nothing_started() -> frozenset[str]:
    """What a run folder holds before its training starts: a run stopped then leaves nothing worth keeping."""
    return layout.NOTHING_STARTED | run_folder_entries()


@contextmanager
def logging_into(folder: RunFolder) -> Iterator[None]:
    """A stacked sweep's job logs into its own train.log, as Hydra's job logging writes it (Hydra's log
    file points at the last job it set up, so it is set aside meanwhile)."""
    root = logging.getLogger()
    hydras = [handler for handler in root.handlers if isinstance(handler, logging.FileHandler)]
    with run_log(folder, hydras[0].formatter if hydras else None):
        for handler in hydras:
            root.removeHandler(handler)
        try:
            yield
        finally:
            for handler in hydras:
                root.addHandler(handler)


@contextmanager
def thread_logging_into(folder: RunFolder) -> Iterator[None]:
    """A tune trial logs this thread's records into its own train.log (trials train side by side in threads)."""
    thread = threading.get_ident()
    with run_log(folder) as handler:
        handler.addFilter(lambda record: record.thread == thread)
        yield


@contextmanager
def run_log(folder: RunFolder, formatter: Optional[logging.Formatter] = None) -> Iterator[logging.Handler]:
    """The run folder's train.log on the root logger, in Hydra's job-logging format unless given one."""
    handler = logging.FileHandler(folder.layout.train_log)
    handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()


# Hydra's job logging format (configs/hydra/job_logging/autoenc.yaml), for a train.log autoenc opens itself.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class StopRequest:
    """What Ctrl-C or SIGTERM asks of the work running (``stop_on_signals``)."""

    def request(self, signal_name: str) -> None:
        """Stop at the next safe point (a step's end)."""
        raise NotImplementedError

    def requested(self) -> bool:
        """Whether a stop was asked for already (then another signal stops at once)."""
        raise NotImplementedError


class TrainersStop(StopRequest):
    """Each trainer stops after its current step."""

    def __init__(self, *trainers: Trainer) -> None:
        self.trainers = trainers

    def request(self, signal_name: str) -> None:
        for trainer in self.trainers:
            trainer.stop_requested = signal_name

    def requested(self) -> bool:
        return any(trainer.stop_requested for trainer in self.trainers)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[list[str]]:
    """Ctrl-C or SIGTERM asks ``stop`` to stop at its next safe point; a second one, here or after an
    earlier request, stops at once (KeyboardInterrupt). Yields the signals received here."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum: int, frame: Any) -> None:
        if received or stop.requested():
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        stop.request(received[0])

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def announce(parts: RunParts, folder: RunFolder, resume: Optional[dict[str, Any]]) -> None:
    config, data = parts.config, parts.data
    log.info("run folder %s", folder.path)
    console.print(
        f"[bold]autoenc train[/] {config.model.name} {data.input_shape}->{parts.model.code_dim} "
        f"on {config.data.name} ({len(data.train)} train / {len(data.val)} val), device {parts.device}, "
        + ", ".join(f"{phase.name} {phase.epochs} epochs" for phase in parts.phases),
        soft_wrap=True,
    )
    if resume is not None:
        console.print(f"resuming after {resume['epoch']} epochs (+{resume['step_in_epoch']} steps)")
        if folder.hydra_config_edited():
            console.print(
                f"[yellow]note[/]: {folder.layout.hydra_config} was edited after the run started; a resume trains "
                "with the run's own config (saved in its checkpoint), so the edit is not used: only "
                f"{', '.join(RESUME_OVERRIDABLE)} may change, on the command line",
                soft_wrap=True,
            )


# Codes this large mean the weights blew up (a learning rate far too high); the run still "completes".
EXPLODED_CODE = 1e6


def health_notes(result: FitResult, config: Any, network: Any) -> list[str]:
    """Warnings for a run that completed with exploding activations, or whose sparsity penalty left the code
    all-dead or dense."""
    last, notes = result.history[-1], []
    if last.mean_activation is not None and last.mean_activation >= EXPLODED_CODE:
        notes.append(
            f"the codes exploded (mean |code| {last.mean_activation:.3g} at the last epoch): optimizer.lr="
            f"{config.optimizer.lr:g} is likely too high"
        )
    if last.l0 is not None and last.dead_fraction is not None:
        notes.append(
            collapse_note(config.sparsity, last.l0, last.dead_fraction, network.code_dim, network.code_activation)
        )
    return [note for note in notes if note is not None]


def say_notes(notes: list[str], label: str = "note") -> list[str]:
    for note in notes:
        log.warning(note)
        console.print(f"[yellow]{label}[/]: {note}", soft_wrap=True)
    return notes


def optional(what: str, action: Callable[[], Any]) -> Any:
    """Run an extra that a finished run can do without; a failure is a note in the log, not a failed run."""
    try:
        return action()
    except Exception as error:  # noqa: BLE001 - any failure of an extra is reported, never fatal
        log.warning("%s skipped: %s: %s", what, type(error).__name__, error)
        console.print(f"[yellow]note[/]: {what} skipped ({type(error).__name__}: {error})", soft_wrap=True)
        return None


def count_parameters(model: Any) -> int:
    """Distinct parameters, so a weight shared by two layers counts once."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())
