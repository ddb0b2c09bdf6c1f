"""``autoenc tune``'s arguments: train overrides, ``tune.*`` settings, the search space, ``resume=``; and the
plan they make, checked whole before any trial starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from autoenc_cli.compose import compose, run_config
from autoenc_cli.error_report import one_line_or_none
from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import STUDY_DB
from autoenc_cli.tuning.search_space import Param, check_corners, parse_params
from autoenc_cli.tuning.settings import RESUMABLE, Objective, TuneConfig, parse_objectives, pruning_metric

USAGE = f"""usage: autoenc tune [TRAIN OVERRIDES] tune.params='{{KEY: SPEC, ...}}' [tune.KEY=VALUE] [resume=SWEEP_DIR]

Search hyperparameters with Optuna: each trial is an ordinary `autoenc train` run (the same overrides), with
the searched keys sampled; the study ({STUDY_DB}), the trials' run folders and the report go to a sweep folder.

  autoenc tune model=sparse_fc sparsity=topk 'tune.params={{k: int(4, 64, log), optimizer.lr: float(1e-4, 1e-2, log)}}'
  autoenc tune model=sparse_fc sparsity=topk 'tune.params={{k: int(4, 64, log)}}' 'tune.objectives=[val_mse,l0]'
  autoenc tune 'tune.params={{model.encoder: choice([{{width: 256}}], [{{width: 512}}, {{width: 256}}])}}'
  autoenc tune resume=outputs/sweeps/<study> tune.trials=40     (continue, or work on it from another terminal)

SPEC: int(LOW, HIGH[, log][, step=N]) | float(LOW, HIGH[, log][, step=X]) | choice(A, B, ...);
tune.params may also be a YAML file mapping KEY to SPEC. hydra.sweep.dir=DIR chooses the folder.

Options (tune.KEY=VALUE), with their defaults:

"""


@dataclass
class Arguments:
    base: list[str] = field(default_factory=list)  # train overrides, as `autoenc train` takes them
    tune: list[str] = field(default_factory=list)  # tune.KEY=VALUE, other than the search space
    params: Optional[str] = None  # tune.params=...
    param_keys: dict[str, str] = field(default_factory=dict)  # tune.params.KEY=SPEC
    resume: Optional[str] = None
    sweep_dir: Optional[str] = None

    def resumable(self) -> list[str]:
        return [argument for argument in self.tune if tune_key(argument) in RESUMABLE]

    def defines_study(self) -> bool:
        """Arguments other than resume= and the ones a resume may change."""
        return bool(self.base or self.params or self.param_keys or len(self.resumable()) < len(self.tune))


def tune_key(argument: str) -> str:
    return argument.partition("=")[0].removeprefix("tune.")


def parse_arguments(argv: list[str]) -> Arguments:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = Arguments()
    for argument in argv:
        key, equals, value = argument.partition("=")
        if argument.startswith("-") or not equals:
            raise UserError(
                f"'{argument}': autoenc tune takes KEY=VALUE arguments only (it runs its own search, no -m); "
                "'autoenc tune --help' lists them"
            )
        if key == "resume":
            arguments.resume = value
        elif key == "hydra.sweep.dir":
            arguments.sweep_dir = value
        elif key.lstrip("+~").startswith(("hydra.", "hydra/")):
            raise UserError(
                f"'{argument}': autoenc tune runs its trials itself; of Hydra's settings it takes hydra.sweep.dir"
            )
        elif key == "tune.params":
            arguments.params = value
        elif key.startswith("tune.params."):
            arguments.param_keys[key.removeprefix("tune.params.")] = value
        elif key.startswith("tune."):
            as_list = key == "tune.objectives" and not value.startswith("[")  # val_mse,l0 reads as a sweep
            arguments.tune.append(f"{key}=[{value}]" if as_list else argument)
        else:
            arguments.base.append(argument)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments.base)
    except Exception as error:  # noqa: BLE001 - a malformed override is one line
        raise UserError(one_line_or_none(error) or str(error)) from None
    for override in parsed:
        if override.is_sweep_override():
            raise UserError(
                f"'{override.input_line}' is a sweep; autoenc tune searches tune.params instead, e.g. "
                f"tune.params='{{{override.get_key_element()}: choice(...)}}'"
            )
    return arguments


@dataclass
class Plan:
    """A checked study: what every trial starts from, what is searched, and how."""

    arguments: Arguments
    settings: TuneConfig
    objectives: list[Objective]
    params: dict[str, Param]
    seed: int
    output_root: str
    threads: Optional[int]  # trainer.threads of the base config
    prune_on: Optional[str] = None

    def identity(self) -> dict[str, Any]:
        """What a resume must repeat (the base overrides, the search space, the objectives and the search
        settings); tune.trials, tune.n_jobs and tune.timeout may change."""
        settings = {
            name: value
            for name, value in dataclasses.asdict(self.settings).items()
            if name not in (*RESUMABLE, "params", "objectives")
        }
        return {
            "overrides": self.arguments.base,
            "params": {key: param.text() for key, param in self.params.items()},
            "objectives": [objective.text() for objective in self.objectives],
            "tune": settings,
        }

    def recorded_arguments(self) -> list[str]:
        """The command's arguments in a form that starts the same study again (the search space inline)."""
        space = ", ".join(f"{key}: {param.text()}" for key, param in self.params.items())
        tune = [argument for argument in self.arguments.tune if tune_key(argument) not in RESUMABLE]
        return [*self.arguments.base, *tune, f"tune.params={{{space}}}"]


def tune_settings(arguments: list[str]) -> TuneConfig:
    from autoenc_cli.schema.fields import check_tree, with_prefix
    from autoenc_cli.schema.resolve import typed

    plain = OmegaConf.to_container(compose("tune", arguments).tune, resolve=True)
    assert isinstance(plain, dict)
    settings = typed(TuneConfig, plain, "tune")
    with_prefix("tune", lambda: check_tree(settings))
    return settings


def check_resume(arguments: Arguments, recorded_argv: list[str], study_dir: str) -> None:
    """resume=STUDY with more arguments: each one given must agree with the command that started the study
    (only tune.trials, tune.n_jobs and tune.timeout may change). Checked before anything is composed from the
    new command, so a change is named as such, not as the error the changed command alone would give."""
    if not arguments.defines_study():
        return
    recorded = parse_arguments(recorded_argv)
    got = [argument for argument in arguments.base if argument not in recorded.base]
    theirs = texts(recorded.params, recorded.param_keys) or {}
    given = [f"tune.params={arguments.params}"] if arguments.params is not None else []
    given += [f"tune.params.{key}={spec}" for key, spec in arguments.param_keys.items()]
    if arguments.params is not None:  # a whole search space: the same one
        if texts(arguments.params, arguments.param_keys) != theirs:
            got += given
    else:  # single keys: each as the study searches it
        for key, spec in arguments.param_keys.items():
            mine = texts(None, {key: spec})
            if mine is None or any(theirs.get(name) != text for name, text in mine.items()):
                got.append(f"tune.params.{key}={spec}")
    changed = [argument for argument in arguments.tune if tune_key(argument) not in RESUMABLE]
    if changed:
        mine_settings = dataclasses.asdict(tune_settings(arguments.tune))
        their_settings = dataclasses.asdict(tune_settings(recorded.tune))
        got += [
            argument
            for argument in changed
            if mine_settings.get(tune_key(argument)) != their_settings.get(tune_key(argument))
        ]
    if got:
        raise UserError(
            f"resume={study_dir} continues the study started with [{' '.join(recorded_argv)}]; only tune.trials, "
            f"tune.n_jobs and tune.timeout may change (got {' '.join(got)})"
        )


def texts(value: Optional[str], per_key: dict[str, str]) -> Optional[dict[str, str]]:
    """A search space in canonical form; None where it does not parse."""
    try:
        return {key: param.text() for key, param in parse_params(value, per_key).items()}
    except UserError:
        return None


def plan_study(arguments: Arguments) -> Plan:
    """Every check before the first trial: the settings, the objectives, the search space's keys, and both
    ends of every range through the whole config check."""
    settings = tune_settings(arguments.tune)
    objectives = parse_objectives(settings.objectives)
    params = parse_params(arguments.params, arguments.param_keys)
    base = arguments.base
    cfg = compose("train", base)  # a key given twice is named as such, not as the first range end it spoils
    given = {override.partition("=")[0].lstrip("+~") for override in base}
    for key, param in params.items():
        if key in given:
            raise UserError(f"tune.params.{key}: {key} is also fixed by an override ({key}=...); give only one")
        try:
            compose("train", [*base, param.override(param.corners()[0])])
        except UserError as error:
            raise UserError(f"tune.params.{key}: {error}") from None
    check_corners(params, base, run_config)
    pruner_given = any(tune_key(argument) == "pruner" for argument in arguments.tune)
    plan = Plan(
        arguments,
        settings,
        objectives,
        params,
        seed=settings.seed if settings.seed is not None else int(cfg.seed),
        output_root=str(cfg.output_root),
        threads=OmegaConf.select(cfg, "trainer.threads"),
    )
    plan.prune_on = pruning_metric(settings, objectives, pruner_given)
    return plan


def help_text() -> str:
    from importlib import resources

    return USAGE + (resources.files("autoenc_cli.configs") / "tune.yaml").read_text()
