"""``autoenc train``: resolve and check the config -> build data, model, objective, phases -> fit with
callbacks -> write the run's artifacts. ``job`` is the Hydra task function; ``train`` is the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.artifacts.console import ProgressBars, console, metrics_table
from autoenc_cli.artifacts.figure_workers import FigureWorkers
from autoenc_cli.artifacts.html_report import write_html_report
from autoenc_cli.artifacts.run_figures import run_figure_drawings
from autoenc_cli.artifacts.run_folder import RunFolder, RunFolderWriter, refuse_unless_new
from autoenc_cli.baselines.pca import PCABaseline, pca_baseline
from autoenc_cli.build import build_parts
from autoenc_cli.data.tensors import whole_split
from autoenc_cli.errors import DataError, TrainingInterrupted, UserAbort, UserError
from autoenc_cli.folder_lock import claim_folder, held
from autoenc_cli.hydra_app import CONFIG_PATH, RunComplete, close_log_files_in, put_back, run_hydra_app
from autoenc_cli.loggers.run_loggers import RunLoggers
from autoenc_cli.resume import RESUME_OVERRIDABLE, resume_point, run_folder_of
from autoenc_cli.schema import TrainConfig
from autoenc_cli.schema.check import check_shorthands
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.callbacks import Callback as TrainingCallback
from autoenc_cli.training.checkpoint import data_fingerprint, model_fingerprint
from autoenc_cli.training.distributed import shutdown as shutdown_distributed
from autoenc_cli.training.loop import FitResult, Trainer
from autoenc_cli.training.metrics import corrupted_inputs, psnr
from autoenc_cli.training.parts import RunParts
from autoenc_cli.training.records import RunSummary, as_dict, carried

log = logging.getLogger("autoenc")


# Hydra's flags that take a value; the value is the next argument unless given as --flag=value.
HYDRA_VALUE_FLAGS = {
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--cfg",
    "-c",
    "--package",
    "-p",
}


def main(argv: Sequence[str]) -> None:
    run_hydra_app(hydra_task, "autoenc train", flags_first(argv))


def flags_first(argv: Sequence[str]) -> list[str]:
    """Hydra's flags before the overrides, wherever the user typed them (Hydra's parser wants them first)."""
    flags, overrides, arguments = [], [], list(argv)
    while arguments:
        argument = arguments.pop(0)
        if not argument.startswith("-"):
            overrides.append(argument)
            continue
        flags.append(argument)
        if argument in HYDRA_VALUE_FLAGS and arguments:
            flags.append(arguments.pop(0))
    return [*flags, *overrides]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_task(cfg: DictConfig) -> Optional[dict[str, Any]]:
    # A launcher plugin pickles this function by value (its name now holds Hydra's wrapper), so it
    # refers to nothing but ``job``, which pickles by reference.
    return job(cfg)


def job(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """One run, or one job of a sweep (``resume`` continues it; see ``autoenc_cli.resume``)."""
    prepared = PreparedJob.of(cfg)
    with job_outcome(prepared.folder, prepared.multirun):
        prepared.prepare()
        if prepared.config is None:
            return prepared.complete
        return as_dict(train(**prepared.train_arguments()))
    return None


@dataclass
class PreparedJob:
    """A job of Hydra's, up to its training: its folder started (or continued), its config resolved."""

    cfg: DictConfig
    folder: RunFolder
    multirun: bool
    overrides: list[str]
    sweep_dir: Optional[Path]
    config: Optional[TrainConfig] = None  # None: nothing to train (``complete`` holds its metrics)
    config_yaml: str = ""
    resume: Optional[dict[str, Any]] = None
    run_id: Optional[str] = None
    complete: Optional[dict[str, Any]] = None

    @classmethod
    def of(cls, cfg: DictConfig) -> "PreparedJob":
        hydra_config = HydraConfig.get()
        multirun = hydra_config.mode == RunMode.MULTIRUN
        sweep_dir = Path(hydra_config.sweep.dir) if multirun else None
        folder = RunFolder(Path(hydra_config.runtime.output_dir))
        return cls(cfg, folder, multirun, list(hydra_config.overrides.task), sweep_dir)

    def prepare(self) -> None:
        check_shorthands(self.overrides)
        point = resume_point(with_absolute_paths(self.cfg), self.folder.path, self.overrides, self.multirun)
        if point.cfg is None:
            console.print(point.complete, soft_wrap=True)
            self.complete = self.folder.read_metrics()
            return
        self.config_yaml = OmegaConf.to_yaml(point.cfg)
        self.config = resolve(point.cfg)
        # A sweep being resumed restarts its jobs that never trained in their own folders.
        fresh = point.state is None and not self.cfg.resume
        identity = self.folder.start(self.config_yaml) if fresh else self.folder.continued(self.config_yaml)
        self.resume, self.run_id = point.state, identity["run_id"]

    def train_arguments(self) -> dict[str, Any]:
        return dict(
            config=self.config,
            config_yaml=self.config_yaml,
            folder=self.folder,
            resume=self.resume,
            run_id=self.run_id,
            sweep_dir=self.sweep_dir,
        )


def train(
    config: TrainConfig,
    config_yaml: str,
    folder: RunFolder,
    resume: Optional[dict[str, Any]] = None,
    run_id: Optional[str] = None,
    callbacks: Sequence[TrainingCallback] = (),
    sweep_dir: Optional[Path] = None,
) -> RunSummary:
    """Train one run into ``folder``. ``callbacks`` see the loop's events after the run folder's writer
    (``autoenc tune`` reports each epoch to its trial); ``sweep_dir`` is the sweep or study the run belongs
    to (loggers group its runs there)."""
    started = time.perf_counter()
    parts = build_parts(config)
    if not parts.world.is_main:  # under torchrun only rank 0 shows progress and writes files
        Trainer(parts).fit(resume)
        return RunSummary(status="completed")
    run = open_run(parts, config_yaml, folder, resume, run_id, callbacks, sweep_dir, started)
    with ProgressBars(run.total_epochs, completed=resume["epoch"] if resume else 0) as bars:
        run.trainer.callbacks.insert(0, bars)
        with stop_on_signals(run.trainer):
            result = run.trainer.fit(resume)
    return close_run(run, result)


@dataclass
class OpenRun:
    """A run between its start (folder writer, loggers and trainer set up) and its results."""

    parts: RunParts
    folder: RunFolder
    loggers: RunLoggers
    trainer: Trainer
    resume: Optional[dict[str, Any]]
    started: float

    @property
    def total_epochs(self) -> int:
        return sum(phase.epochs for phase in self.parts.phases)


def open_run(
    parts: RunParts,
    config_yaml: str,
    folder: RunFolder,
    resume: Optional[dict[str, Any]],
    run_id: Optional[str],
    callbacks: Sequence[TrainingCallback],
    sweep_dir: Optional[Path],
    started: float,
    data_fingerprint_of: Callable[[Any], str] = data_fingerprint,
) -> OpenRun:
    """Check the checkpoint's data, announce the run, start its loggers and its folder's writer."""
    config = parts.config
    fingerprint = {
        "run_id": run_id,
        "model": model_fingerprint(config, parts.data.input_shape),
        "data": data_fingerprint_of(parts.data),
    }
    trained_on = ((resume or {}).get("fingerprint") or {}).get("data")
    if trained_on not in (None, fingerprint["data"]):
        raise DataError(
            f"the run's data ({config.data.name}) changed since the run trained (other images, labels or another "
            "split): continuing would train and validate on a different split; restore the data to resume"
        )
    announce(parts, folder, resume)
    loggers = RunLoggers.build(parts, folder.path, run_id, sweep_dir, resume)
    logged_runs = loggers.start()  # before the first checkpoint, which keeps their ids for a resume
    writer = RunFolderWriter(folder, config_yaml, fingerprint, logged_runs)
    # Loggers before the writer: an epoch is checkpointed only once it is logged (a resume re-logs, never skips).
    trainer = Trainer(parts, [*([loggers] if loggers.loggers else []), writer, *callbacks])
    return OpenRun(parts, folder, loggers, trainer, resume, started)


def close_run(
    run: OpenRun, result: FitResult, baselines: Optional[dict] = None, stack: Optional[str] = None
) -> RunSummary:
    """Write the results of a finished fit: metrics, PCA baseline, figures, report, loggers' last records.
    ``baselines`` shares PCA baselines between runs of one process and ``stack`` names the stack the run
    trained in (a stacked sweep's jobs; ``autoenc_cli.stacking``)."""
    return start_closing(run, result, baselines, stack)()


def start_closing(
    run: OpenRun,
    result: FitResult,
    baselines: Optional[dict] = None,
    stack: Optional[str] = None,
    figure_workers: Optional[FigureWorkers] = None,
) -> Callable[[], RunSummary]:
    """``close_run`` in two halves: this one writes the metrics and the PCA baseline and starts the figures
    (in ``figure_workers`` when given, so several runs' figures draw at once); the call it returns waits
    for them and writes the rest."""
    folder, parts, trainer, loggers = run.folder, run.parts, run.trainer, run.loggers

    def interrupted_or_failed(write: Callable[[], Any]) -> Any:
        # Training is done: a Ctrl-C now waits for the results to be written (a second one stops at once).
        with stop_on_signals(trainer):
            try:
                return write()
            except BaseException:
                loggers.on_interrupt(None)  # the trackers' runs end as interrupted, not running
                raise

    pending = interrupted_or_failed(
        lambda: start_results(folder, parts, trainer.network, result, baselines, stack, figure_workers)
    )

    def finish() -> RunSummary:
        def write() -> RunSummary:
            summary = pending()
            summary.wall_seconds = time.perf_counter() - run.started
            folder.write_metrics(summary)
            loggers.finish(summary, [folder.figures / name for name in summary.figures or []], trainer.global_step)
            return summary

        summary = interrupted_or_failed(write)
        if trainer.stop_requested:
            console.print(
                f"[yellow]note[/]: {trainer.stop_requested} came after training ended; the run finished writing"
            )
        console.print(metrics_table(as_dict(summary), title="final metrics"))
        console.print(f"run folder: [bold]{folder.path}[/]", soft_wrap=True)
        return summary

    return finish


# Config keys that name files: stored absolute, so a run, its eval and its reconstruct work from any folder.
PATH_KEYS = ("data.path", "data.root")


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    for key in PATH_KEYS:
        if OmegaConf.select(cfg, key, throw_on_missing=False) is None or OmegaConf.is_missing(cfg.data, key[5:]):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, str(Path(value).expanduser().absolute()), merge=False)
    return cfg


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
            claim = claim_folder(run_dir, "run", disposable=NOTHING_STARTED, appended=("train.log",))
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
    if path.is_file() and path.suffix != ".pt":
        raise UserError(
            f"resume='{resume}' is a file but not a checkpoint (.pt); give a run folder (resume=RUN_DIR) or one of "
            "its checkpoints (resume=RUN_DIR/checkpoints/last.pt)"
        )
    if not path.exists():
        raise UserError(f"resume='{resume}' does not exist; give a run folder or a checkpoint (.pt) of one")
    if run_dir.absolute() != run_folder_of(resume).absolute():
        raise UserError(f"resume={resume} continues in that run's own folder; drop hydra.run.dir={run_dir}")
    if (run_dir / "study.db").is_file():
        raise UserError(f"resume='{resume}' is a tune study; continue it with: autoenc tune resume={resume}")
    if (run_dir / "multirun.yaml").is_file():
        raise UserError(
            f"resume='{resume}' is a sweep; finish it with the command that started it, with -m and resume={resume}"
        )


def check_resume(config: DictConfig, run_dir: Path) -> None:
    """Everything a resume checks (checkpoint, overrides, completeness) before Hydra writes into the folder."""
    task_config = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    overrides = [str(item) for item in config.hydra.overrides.task]
    point = resume_point(with_absolute_paths(task_config), run_dir, overrides, multirun=False)
    if point.cfg is None:
        raise RunComplete(point.complete)


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
                f"[yellow]note[/]: {folder.path / '.hydra' / 'config.yaml'} was edited after the run started; a "
                "resume trains with the run's own config (saved in its checkpoint), so the edit is not used: only "
                f"{', '.join(RESUME_OVERRIDABLE)} may change, on the command line",
                soft_wrap=True,
            )


def start_results(
    folder: RunFolder,
    parts: RunParts,
    network: Any,
    result: FitResult,
    baselines: Optional[dict] = None,
    stack: Optional[str] = None,
    figure_workers: Optional[FigureWorkers] = None,
) -> Callable[[], RunSummary]:
    """metrics.json first, then the optional extras (a figure or the report failing never un-completes a
    run): this call writes up to the figures, which it starts; the call it returns writes the rest."""
    last = result.history[-1]
    summary = carried(
        last,
        RunSummary,
        status="completed",
        val_psnr=psnr(last.val_mse),
        best_val_loss=result.best_val_loss,
        best_epoch=result.best_epoch,
        epochs=len(result.history),
        code_dim=network.code_dim,
        num_parameters=count_parameters(parts.model),
        train_seconds=result.train_seconds,
        samples_per_second=result.samples_per_second,
        device=str(parts.device),
        seed=parts.config.seed,
        l0_threshold=result.final_codes.threshold if result.final_codes is not None else None,
        stack=stack,
    )
    folder.write_metrics(summary)
    trainer_config = parts.config.trainer
    if trainer_config.pca_baseline:
        baseline = optional("PCA baseline", lambda: shared_pca_val_mse(parts, network.code_dim, baselines))
        if baseline is not None:
            summary.pca_val_mse, summary.pca_val_mse_by_k = baseline.mse, baseline.mse_by_k
    drawing, input_notes = None, []
    if trainer_config.figures:
        drawings, input_notes = run_figure_drawings(parts, network, folder.figures, result.history, result.final_codes)
        drawing = (figure_workers or FigureWorkers(in_process=True)).submit(drawings)

    def finish() -> RunSummary:
        written, drawing_notes = drawing() if drawing is not None else ([], [])
        notes = health_notes(last, parts.config) + input_notes + drawing_notes
        if trainer_config.figures:
            summary.figures = [path.name for path in written]
        for note in notes:
            log.warning(note)
            console.print(f"[yellow]note[/]: {note}", soft_wrap=True)
        summary.notes = notes or None
        folder.write_metrics(summary)
        optional("report.html", lambda: write_html_report(folder.path))
        return summary

    return finish


# Codes this large mean the weights blew up (a learning rate far too high); the run still "completes".
EXPLODED_CODE = 1e6


def health_notes(last: Any, config: TrainConfig) -> list[str]:
    """A note for a run that completed with exploding activations."""
    if last.mean_activation is None or last.mean_activation < EXPLODED_CODE:
        return []
    return [
        f"the codes exploded (mean |code| {last.mean_activation:.3g} at the last epoch): optimizer.lr="
        f"{config.optimizer.lr:g} is likely too high"
    ]


def shared_pca_val_mse(parts: RunParts, code_dim: int, baselines: Optional[dict]) -> Optional[PCABaseline]:
    """``pca_val_mse``, computed once per data, code size and validation inputs when ``baselines`` keeps them."""
    if baselines is None:
        return pca_val_mse(parts, code_dim)
    noise = parts.noise
    key = (id(parts.data.train.images), id(parts.data.val.images), code_dim)
    if noise.active:  # the corrupted validation inputs depend on the noise and the run's seed
        key += (repr(parts.config.noise), parts.config.seed, parts.config.trainer.eval_batch_size)
    if key not in baselines:
        baselines[key] = pca_val_mse(parts, code_dim)
    return baselines[key]


def pca_val_mse(parts: RunParts, code_dim: int) -> Optional[PCABaseline]:
    """PCA with code_dim components on the validation inputs the autoencoder saw (corrupted when denoising),
    and with every fewer number of components (the sweep's frontier plot draws that curve)."""
    whole_split(parts.data.train, "the PCA baseline")  # a memory-mapped split (data=vectors): skipped, with a note
    val, noise = parts.data.val, parts.noise
    inputs = val.images
    if noise.active:
        inputs = corrupted_inputs(val, parts.config.trainer.eval_batch_size, noise, parts.validation_noise_generator())
    return pca_baseline(parts.data.train.images, inputs, code_dim, val.images)


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


@contextmanager
def stop_on_signals(*trainers: Trainer) -> Iterator[None]:
    """Ctrl-C or SIGTERM asks the trainers to stop after the current step; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if any(trainer.stop_requested for trainer in trainers):
            raise KeyboardInterrupt
        for trainer in trainers:
            trainer.stop_requested = signal.Signals(signum).name

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# A folder holding only these never trained (run.json is written before the data is loaded).
# (A logger that failed to start may have left its folder.)
NOTHING_STARTED = {".hydra", "train.log", "run.json", "tensorboard", "wandb"}


@contextmanager
def job_outcome(folder: RunFolder, multirun: bool) -> Iterator[None]:
    """How a job ends. A single run reports a user mistake as one line; in a sweep a failed job is
    recorded (metrics.json and the sweep summary say failed) and the other jobs go on; an interruption
    stops the sweep. A folder in which nothing started is put back as it was (a new one removed)."""
    try:
        try:
            yield
        finally:
            shutdown_distributed()
            if int(os.environ.get("RANK", "0")) > 0:  # a torchrun rank's scratch folder (see hydra_app)
                shutil.rmtree(folder.path, ignore_errors=True)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        if not stopped_with_checkpoint(folder):
            discard_unstarted(folder)
        elif not multirun:  # a sweep says how to finish the sweep
            raise UserAbort(
                TrainingInterrupted(
                    f"stopped at once by a second Ctrl-C; the last checkpoint is kept; continue with: "
                    f"autoenc train resume={folder.path}"
                )
            ) from None
        raise
    except TrainingInterrupted as error:
        raise UserAbort(
            TrainingInterrupted(f"{error}: checkpoint saved; continue with: autoenc train resume={folder.path}")
        ) from None
    except UserError as error:
        log.error("stopped: %s", error)  # in train.log, unless the folder is put back as it was
        discard_unstarted(folder)
        if not multirun:
            raise UserAbort(error) from None
        record_job_failure(folder, str(error))
    except Exception as error:
        log.exception("failed")
        if not multirun:
            raise
        record_job_failure(folder, f"{type(error).__name__}: {error}")


def stopped_with_checkpoint(folder: RunFolder) -> bool:
    """A run stopped at once mid-training that has a checkpoint to continue from (its metrics.json says
    interrupted); False when it has none, or had finished training."""
    status = folder.read_metrics().get("status")
    if status == "completed" or not (folder.checkpoints / "last.pt").is_file():
        return False
    if status != "interrupted":  # stopped before the loop could say so (while writing a checkpoint)
        folder.write_metrics(
            RunSummary(status="interrupted", stopped="at once by a second Ctrl-C", signal="SIGINT")
        )
    return True


def discard_unstarted(folder: RunFolder) -> None:
    """Put back a folder in which no training started: the folder this process claimed for the run as it
    was when claimed (a new one removed, a resumed one's .hydra/resumed entry and train.log lines undone);
    a sweep job's folder, which holds only what Hydra and the job wrote, removed."""
    claim = held(folder.path)
    if claim is None:
        discard_if_empty(folder.path)
        return
    put_back(claim)


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder in which nothing started, and the parents Hydra made for it if now empty."""
    if run_dir.is_dir() and {entry.name for entry in run_dir.iterdir()} <= NOTHING_STARTED:
        close_log_files_in(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.absolute().parents:
            if parent == Path.cwd().absolute():
                break
            try:
                parent.rmdir()  # only when empty: outputs/runs of a first, refused command
            except OSError:
                break


def record_job_failure(folder: RunFolder, message: str) -> None:
    console.print(f"[red]job failed[/]: {message}", soft_wrap=True)
    folder.write_metrics(RunSummary(status="failed", error=message))
