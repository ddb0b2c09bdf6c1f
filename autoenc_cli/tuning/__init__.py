"""``autoenc tune``: hyperparameter search with Optuna over the same config space as ``autoenc train``.

search_space parses ``tune.params``; settings is the ``tune.*`` schema; command checks the whole plan
before any trial; study holds study.db and the trial budget; trials runs each trial as an ordinary run
(pruned from its per-epoch validation metric); results writes best.json and the sweep report.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from autoenc_cli.errors import TrainingInterrupted, UserAbort, UserError
from autoenc_cli.folder_layout import METRICS_JSON, SUMMARY_CSV, StudyLayout


def main(argv: Sequence[str]) -> int:
    from autoenc_cli.tuning.command import help_text

    if any(argument in ("-h", "--help") for argument in argv):
        print(help_text())
        return 0
    from autoenc_cli.extras import require

    try:
        require("optuna", "tune", "autoenc tune")
        return tune(list(argv))
    except UserError as error:
        raise UserAbort(error) from None


def tune(argv: list[str]) -> int:
    import optuna

    from autoenc_cli.artifacts.console import console
    from autoenc_cli.artifacts.run_folder import refuse_unless_new
    from autoenc_cli.folder_lock import claim_folder
    from autoenc_cli.job import stop_on_signals
    from autoenc_cli.tuning import study as studies
    from autoenc_cli.tuning.command import check_resume, parse_arguments, plan_study, tune_key
    from autoenc_cli.tuning.results import finish
    from autoenc_cli.tuning.trials import StudyRun, StudyStop, run_workers

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # autoenc prints each trial's outcome itself
    arguments = parse_arguments(argv)
    record, creating = None, None
    if arguments.resume:
        study_dir = Path(arguments.resume)
        record = studies.read_record(study_dir)
        if arguments.sweep_dir not in (None, arguments.resume):
            raise UserError(f"resume={arguments.resume} continues in that folder; drop hydra.sweep.dir")
    if record is not None:  # the resume rule first: every argument given agrees with the recorded command
        check_resume(arguments, record["arguments"], arguments.resume)
        # then the recorded command, with any new budget
        arguments = parse_arguments([*record["arguments"], *arguments.resumable(), f"resume={study_dir}"])
    plan = plan_study(arguments)
    if record is not None:
        if record["study"] != plan.identity():
            raise UserError(
                f"'{study_dir}' was started with [{' '.join(record['arguments'])}]; continue it with resume= alone "
                "or with that command plus resume= (only tune.trials, tune.n_jobs and tune.timeout may change)"
            )
        name = record["study_name"]
        if not any(tune_key(argument) == "trials" for argument in arguments.tune):
            plan.settings.trials = record.get("trials", plan.settings.trials)  # the total last asked for
    else:
        stamp = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"
        study_dir = Path(arguments.sweep_dir or Path(plan.output_root) / "sweeps" / stamp)
        # Claimed while the study is created, so two new studies never share a folder; once created, other
        # processes may join it (resume=) by design: the study database keeps them apart.
        creating = claim_folder(study_dir, "study")
        try:
            refuse_unless_new(study_dir, what="sweep")
        except UserError:
            creating.undo()
            creating.release()
            raise
        name = plan.settings.study_name or study_dir.name
    objectives, settings = plan.objectives, plan.settings
    pruner = studies.pruner(settings, objectives, plan.prune_on)
    try:
        study = studies.open_study(study_dir, name, objectives, pruner, new=record is None)
    finally:
        if creating is not None:
            creating.release()
    used = studies.trials_used(study)
    if settings.trials < used and any(tune_key(argument) == "trials" for argument in arguments.tune):
        raise UserError(
            f"tune.trials={settings.trials} is below the {used} trials the study in '{study_dir}' already holds; "
            f"tune.trials is the total: give {used} or more"
        )
    # A process joining the study draws other points than the one that started it (the same seed would
    # repeat its first, random trials): the seed is derived from the seed and the trials the study holds.
    held = len(study.get_trials(deepcopy=False))
    sampler = studies.sampler(settings, objectives, studies.sampler_seed(plan.seed, held))
    study.sampler = sampler
    if record is None:
        record = {
            "study_name": name,
            "arguments": plan.recorded_arguments(),
            "study": plan.identity(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    else:
        for number in studies.recover_stale(study, study_dir):
            console.print(f"[yellow]note[/]: trial {number} was left unfinished; its params are queued again")
    studies.write_record(study_dir, {**record, "trials": settings.trials})  # a bare resume= continues to it
    used = studies.trials_used(study)
    console.print(
        f"[bold]autoenc tune[/] {study_dir}: {used} of {settings.trials} trials done; searching "
        f"{', '.join(plan.params)}; {' and '.join(o.text() for o in objectives)}; sampler {type(sampler).__name__}, "
        f"pruner {type(pruner).__name__}{f' on {plan.prune_on}' if plan.prune_on else ''}",
        soft_wrap=True,
    )
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    run = StudyRun(
        study=study,
        study_dir=study_dir,
        base=plan.arguments.base,
        params=plan.params,
        objectives=objectives,
        prune_on=plan.prune_on,
        warmup_epochs=settings.warmup_epochs,
        trials=settings.trials,
        deadline=deadline,
    )
    with torch_threads(settings.n_jobs, plan.threads), stop_on_signals(StudyStop(run)) as stopped_by:
        run_workers(run, settings.n_jobs)
    record = finish(study, study_dir, objectives, plan.params)
    resume_hint = f"autoenc tune resume={study_dir}"
    if stopped_by:
        done = studies.trials_used(study)
        raise UserAbort(
            TrainingInterrupted(
                f"{stopped_by[0]}: the study stopped with {done} of {settings.trials} trials done (checkpoints "
                f"saved, interrupted trials queued again); continue with: {resume_hint}"
            )
        )
    if not record["best"]:
        counts = record["trials"]
        raise UserError(
            f"none of the study's {counts['total']} trials completed ({counts.get('pruned', 0)} pruned, "
            f"{counts.get('fail', 0)} failed); see {StudyLayout(study_dir).summary_csv}"
        )
    if run.failed:  # as a sweep with a failed job: the report is written, the command exits non-zero
        raise UserError(
            f"{len(run.failed)} of the {run.started} trials run failed: {', '.join(run.failed)}; their errors are "
            f"in each trial's {METRICS_JSON} ({SUMMARY_CSV} lists every trial); a failed trial is not run again "
            f"(more trials: {resume_hint} tune.trials=N)"
        )
    console.print(f"more trials: {resume_hint} tune.trials=N (also from another terminal)", soft_wrap=True)
    return 0


@contextmanager
def torch_threads(n_jobs: int, configured: object) -> Iterator[None]:
    """Trials in parallel share the cores (unless trainer.threads says otherwise)."""
    import torch

    previous = torch.get_num_threads()
    if n_jobs > 1 and configured is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // n_jobs))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
