"""``tune.*``: how ``autoenc tune`` searches (configs/tune.yaml holds the defaults), and its objectives."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.folder_layout import METRICS_JSON
from autoenc_cli.schema import choice, number
from autoenc_cli.training.records import EpochRecord, RunSummary

SAMPLERS = ("auto", "tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "successive_halving", "threshold", "none")
# What may change when a study is resumed: how much more to run and how, not what is searched.
RESUMABLE = ("trials", "n_jobs", "timeout")


@dataclass
class TuneConfig:
    # The search space: {KEY: SPEC, ...} inline, or a YAML file (autoenc_cli/tuning/search_space.py); read by
    # autoenc tune itself, since Hydra's grammar has no int(4, 64, log).
    params: Any = None
    # Trials the study should hold in all; resume=SWEEP_DIR continues up to it (pruned and failed trials count,
    # an interrupted one does not: its params run again).
    trials: int = number(20, ge=1)
    # Metrics from metrics.json to minimise; 'maximize:NAME' maximises one. Two or more: a Pareto front.
    objectives: list[str] = field(default_factory=lambda: ["val_mse"])
    # auto: tpe for one objective, nsga2 for several; random samples uniformly.
    sampler: str = choice("auto", SAMPLERS)
    # Stops unpromising trials from the per-epoch value of the objective (one objective only).
    pruner: str = choice("median", PRUNERS)
    # Epochs every trial trains before it may be pruned.
    warmup_epochs: int = number(3, ge=0)
    # Trials sampled at random before the sampler models the results (nsga2: its population), and that
    # finish before the median pruner prunes any.
    startup_trials: int = number(5, ge=1)
    # pruner=threshold: prune a trial whose objective is worse than this (above it when minimising).
    threshold: Optional[float] = None
    # Trials trained at once in this process (threads); more processes: autoenc tune resume=SWEEP_DIR.
    n_jobs: int = number(1, ge=1)
    # The sampler's seed; null: the run's seed.
    seed: Optional[int] = number(None, ge=0)
    # Seconds after which no new trial starts (running ones finish); null: no limit.
    timeout: Optional[float] = number(None, gt=0)
    # The study's name in study.db; null: the study folder's name.
    study_name: Optional[str] = None

    def check(self) -> None:
        if self.pruner == "threshold" and self.threshold is None:
            raise ConfigError("threshold", None, "tune.pruner=threshold needs tune.threshold=VALUE")
        if self.threshold is not None and self.pruner != "threshold":
            raise ConfigError("threshold", self.threshold, "only tune.pruner=threshold uses it")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # minimize | maximize

    @property
    def per_epoch(self) -> bool:
        """Known after every epoch (history.csv), so a trial can be pruned on it."""
        return self.name in {f.name for f in dataclasses.fields(EpochRecord)}

    def text(self) -> str:
        return self.name if self.direction == "minimize" else f"maximize:{self.name}"


def numeric_metrics() -> list[str]:
    hints = typing.get_type_hints(RunSummary)
    return [f.name for f in dataclasses.fields(RunSummary) if hints[f.name] in (Optional[float], Optional[int])]


PREFIXES = {"minimize": "minimize", "min": "minimize", "maximize": "maximize", "max": "maximize"}


def parse_objectives(names: list[str]) -> list[Objective]:
    objectives = []
    for text in names:
        prefix, colon, name = str(text).rpartition(":")
        if colon and prefix not in PREFIXES:
            raise UserError(f"tune.objectives: '{text}': write NAME to minimise it or maximize:NAME")
        if name not in numeric_metrics():
            raise UserError(
                f"tune.objectives: '{name}' is not a metric of {METRICS_JSON}; choose from "
                f"{', '.join(numeric_metrics())}"
            )
        objectives.append(Objective(name, PREFIXES[prefix] if colon else "minimize"))
    if not objectives:
        raise UserError("tune.objectives is empty; give one metric (e.g. [val_mse]) or more (a Pareto front)")
    if len({objective.name for objective in objectives}) < len(objectives):
        raise UserError(f"tune.objectives={list(names)} names a metric twice")
    return objectives


def pruning_metric(settings: TuneConfig, objectives: list[Objective], pruner_given: bool) -> Optional[str]:
    """The per-epoch metric the pruner watches, or None (no pruning) with a note; a pruner asked for where
    it cannot work is an error."""
    from autoenc_cli.artifacts.console import console

    if settings.pruner == "none":
        return None
    reason = None
    if len(objectives) > 1:
        reason = f"Optuna prunes single-objective studies only ({len(objectives)} objectives)"
    elif not objectives[0].per_epoch:
        reason = f"{objectives[0].name} is known only when a run ends, not after every epoch"
    if reason is None:
        return objectives[0].name
    if pruner_given:
        raise UserError(f"tune.pruner={settings.pruner} cannot prune: {reason}; use tune.pruner=none")
    console.print(f"[yellow]note[/]: pruning is off: {reason}", soft_wrap=True)
    return None
