"""The end of a study: best.json (the best trial, or the Pareto front of several objectives), then the same
summary.csv, figures and report.html as a grid sweep (the frontier plot marks the best trials)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from autoenc_cli.artifacts.console import console
from autoenc_cli.folder_layout import StudyLayout
from autoenc_cli.io import write_json
from autoenc_cli.tuning.search_space import Param
from autoenc_cli.tuning.settings import Objective


def front(study: Any, objectives: list[Objective]) -> list[Any]:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(objectives) > 1 else [study.best_trial]


def write_best(study: Any, study_dir: Path, objectives: list[Objective], params: dict[str, Param]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name.lower() for trial in trials)
    best = [
        {
            "trial": trial.number,
            "run": str(trial.number),
            "values": {objective.name: value for objective, value in zip(objectives, trial.values)},
            "params": trial.params,
            "overrides": [params[key].override(value) for key, value in trial.params.items() if key in params],
        }
        for trial in sorted(front(study, objectives), key=lambda trial: trial.values)
    ]
    record = {
        "objectives": [objective.name for objective in objectives],
        "directions": [objective.direction for objective in objectives],
        "trials": {"total": len(trials), **dict(counts)},
        "front": "pareto" if len(objectives) > 1 else "best",  # the summary.csv column that marks them
        "best": best,
    }
    write_json(StudyLayout(study_dir).best_json, record)
    return record


def finish(study: Any, study_dir: Path, objectives: list[Objective], params: dict[str, Param]) -> dict[str, Any]:
    """best.json, summary.csv, the figures and report.html; prints the table and the best trials."""
    from autoenc_cli.artifacts.sweep_report import write_report
    from autoenc_cli.loggers import finish_sweep

    record = write_best(study, study_dir, objectives, params)
    if any(path.is_dir() and path.name.isdigit() for path in study_dir.iterdir()):
        _, table = write_report([study_dir], study_dir)
        console.print(table)
        console.print(f"study summary: [bold]{StudyLayout(study_dir).summary_csv}[/]", soft_wrap=True)
    finish_sweep(study_dir)  # after the report: the trials' MLflow parent run keeps it
    counts = record["trials"]
    states = {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running"}
    shown = ", ".join(f"{counts[state]} {word}" for state, word in states.items() if counts.get(state))
    console.print(f"{counts['total']} trials: {shown or 'none finished'}", soft_wrap=True)
    title = "Pareto front, trial" if len(objectives) > 1 else "best trial"  # each front member is a trial
    for entry in record["best"]:
        shown = ", ".join(f"{name} {value:.6g}" for name, value in entry["values"].items())
        chosen = " ".join(entry["overrides"])
        console.print(
            f"[bold]{title}[/] {entry['trial']}: {shown} ({chosen}) -> {study_dir / entry['run']}", soft_wrap=True
        )
    return record
