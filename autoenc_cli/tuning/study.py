"""The Optuna study of a tune folder: ``study.db`` (SQLite), the sampler and pruner, the trial budget, and
trials that a crash or Ctrl-C left unfinished (failed, their params queued again)."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any, Optional

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import STUDY_DB, TUNE_JSON, StudyLayout
from autoenc_cli.io import read_json, write_json
from autoenc_cli.tuning.settings import Objective, TuneConfig


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{StudyLayout(study_dir).study_db.absolute()}"


def storage(study_dir: Path) -> Any:
    import optuna

    # Waits for a lock held by another worker or process instead of failing at once.
    return optuna.storages.RDBStorage(storage_url(study_dir), engine_kwargs={"connect_args": {"timeout": 60}})


def sampler_seed(seed: int, trials_held: int) -> int:
    """The sampler's seed for a process that finds ``trials_held`` trials in the study: each count gets its own
    stream, mixed from both numbers (not seed + n, which is another study's seed), so a resumed study or a
    joining worker draws new points instead of the first process's."""
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_held]).generate_state(1)[0])


def sampler(settings: TuneConfig, objectives: list[Objective], seed: int) -> Any:
    import optuna

    name = settings.sampler
    if name == "auto":
        name = "tpe" if len(objectives) == 1 else "nsga2"
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, settings.startup_trials))
    with warnings.catch_warnings():  # multivariate TPE is marked experimental, and is the better default
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=settings.startup_trials, multivariate=True, constant_liar=settings.n_jobs > 1
        )


def pruner(settings: TuneConfig, objectives: list[Objective], metric: Optional[str]) -> Any:
    """Warm-up is applied by the trial itself (no pruning before warmup_epochs), so the pruners start at once."""
    import optuna

    if metric is None:
        return optuna.pruners.NopPruner()
    first = max(1, settings.warmup_epochs)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    if settings.pruner == "threshold":
        bound = {"lower" if objectives[0].direction == "maximize" else "upper": settings.threshold}
        return optuna.pruners.ThresholdPruner(**bound)
    return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials)


def open_study(study_dir: Path, name: str, objectives: list[Objective], pruner: Any, new: bool) -> Any:
    """Create or load the study (the sampler is set once the study's trials are known)."""
    import optuna

    directions = [objective.direction for objective in objectives]
    if new:
        return optuna.create_study(storage=storage(study_dir), study_name=name, directions=directions, pruner=pruner)
    if not StudyLayout(study_dir).study_db.is_file():
        raise UserError(f"resume={study_dir}: the folder holds no study ({STUDY_DB}); give a tune study folder")
    study = optuna.load_study(storage=storage(study_dir), study_name=name, pruner=pruner)
    if [direction.name.lower() for direction in study.directions] != directions:
        raise UserError(f"resume={study_dir}: the study's objectives differ from tune.objectives")
    return study


def retried(trials: list[Any]) -> set[int]:
    """Trials whose params were queued again (interrupted or left running by a crash): not counted."""
    return {trial.user_attrs["retry_of"] for trial in trials if "retry_of" in trial.user_attrs}


def trials_used(study: Any) -> int:
    """Trials of the budget (tune.trials) used so far, by every process working on the study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    return sum(1 for trial in trials if trial.state != TrialState.WAITING and trial.number not in again)


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has just started: a trial recorded under its id is a dead one's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(study: Any, study_dir: Path) -> list[int]:
    """Trials left RUNNING by a process of this machine that is gone: marked failed (their run folder
    says why) and their params queued again. Trials of a live process, or of another machine, are left."""
    from optuna.trial import TrialState

    from autoenc_cli.artifacts.run_folder import RunFolder
    from autoenc_cli.training.records import RunSummary

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != socket.gethostname() or process_alive(int(attrs.get("pid", -1))):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        folder = RunFolder(study_dir / str(trial.number))
        if folder.path.is_dir() and not folder.read_metrics():
            error = "the process training this trial stopped (crash or kill); its params were queued again"
            folder.write_metrics(RunSummary(status="failed", error=error))
        recovered.append(trial.number)
    return recovered


def read_record(study_dir: Path) -> dict[str, Any]:
    record = read_json(StudyLayout(study_dir).tune_json)  # the command that started it: a resume must repeat it
    if not record:
        raise UserError(f"resume={study_dir}: the folder holds no tune study ({TUNE_JSON}); give a study folder")
    return record


def write_record(study_dir: Path, record: dict[str, Any]) -> None:
    write_json(StudyLayout(study_dir).tune_json, record)
