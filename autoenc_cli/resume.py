"""``resume=``: which config and checkpoint a run continues from.

A single run resumes from RUN_DIR or a .pt with its saved config. The command that started it may be
repeated with ``resume=RUN_DIR`` added: overrides equal to the saved values are accepted, and only
``RESUME_OVERRIDABLE`` keys may change (``trainer.epochs=N`` extends a run). A completed run is left as
it is. In a sweep, ``resume=SWEEP_DIR`` re-runs the same command: finished jobs are skipped,
interrupted or failed ones continue from their last checkpoint, jobs that never started start.
A single run's command is composed with the run's own group choices (``with_saved_choices``), so the keys of
the options it trained with can be re-stated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from autoenc_cli.configs import group_options
from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import CHECKPOINT_SUFFIX, LAST_CHECKPOINT, RunLayout
from autoenc_cli.io import read_json
from autoenc_cli.schema.resolve import typed_config, with_former_values, with_shorthands_filled
from autoenc_cli.training.checkpoint import check_checkpoint_belongs, load_checkpoint

# What may change when a single run is resumed: how long it trains, where, and where it is logged; not what it
# is. A key under a listed group (logger.mlflow.experiment) may change too.
RESUME_OVERRIDABLE = (
    "trainer.epochs",
    "trainer.device",
    "trainer.log_every",
    "trainer.figures",
    "trainer.threads",
    "logger",
    "gallery",  # what the report shows, not what trains
)


@dataclass
class ResumePoint:
    cfg: Optional[DictConfig]  # the config to train; None: nothing to do (see ``complete``)
    state: Optional[dict[str, Any]] = None  # the checkpoint to continue from; None: start fresh
    complete: str = ""  # why there is nothing to do


def resume_point(cfg: DictConfig, run_dir: Path, task_overrides: list[str], multirun: bool) -> ResumePoint:
    if not cfg.resume:
        return ResumePoint(cfg)
    if not multirun:
        return _resume_run(cfg, str(cfg.resume), without_resume(task_overrides))
    if read_json(RunLayout(run_dir).metrics_json).get("status") == "completed":
        return ResumePoint(None, complete=f"already completed, skipped: {run_dir}")
    if not RunLayout(run_dir).last_checkpoint.is_file():
        return ResumePoint(cfg)
    if without_resume(saved_overrides(run_dir)) != without_resume(task_overrides):
        raise UserError(
            f"'{run_dir}' was run with [{' '.join(without_resume(saved_overrides(run_dir)))}]; "
            "resume a sweep with the command that started it"
        )
    state, saved = load_resume(str(run_dir))
    return ResumePoint(saved, state)


def with_saved_choices(overrides: list[str]) -> list[str]:
    """``resume=RUN_DIR`` with the run's group choices from its command (``noise=gaussian``, ``sparsity=topk``,
    ``experiment=...``) ahead of ``overrides``: Hydra then composes the options the run trained with, so a key
    of one (``noise.variance=0.3``, ``k=16``) is compared with its saved value instead of being refused as a
    key the default option lacks. A group the command names itself keeps its value (another option than the
    run's is refused as a change); a folder without a readable record, or an option autoenc no longer ships,
    adds nothing: the saved config is what resumes."""
    resume = next((_parsed(o) for o in overrides if o.startswith("resume=")), None)
    if resume is None or not isinstance(resume.value(), str) or not resume.value():
        return overrides
    given = {_override_key(override) for override in overrides}
    recorded = [o for o in _recorded_overrides(run_folder_of(resume.value())) if _choice(o) is not None]
    return [*[o for o in recorded if _override_key(o) not in given], *overrides]


def run_choices(run_dir: Path) -> dict[str, tuple[str, ...]]:
    """The options each config group of the run was composed with: as its command chose them (lists
    included), else as Hydra recorded them (``hydra.runtime.choices``, which omits lists); {} without records."""
    choices = dict(choice for o in _recorded_overrides(run_dir) if (choice := _choice(o)) is not None)
    try:
        record = OmegaConf.load(RunLayout(run_dir).hydra_record)
        composed = OmegaConf.to_container(OmegaConf.select(record, "hydra.runtime.choices", default={}))
    except (OSError, ValueError, yaml.YAMLError):
        composed = {}
    for group, option in (composed if isinstance(composed, dict) else {}).items():
        choices.setdefault(str(group), _options(option))
    return choices


def _recorded_overrides(run_dir: Path) -> list[str]:
    try:
        return saved_overrides(run_dir)
    except (OSError, ValueError, TypeError, yaml.YAMLError):  # an unreadable record adds nothing
        return []


def _choice(override: str) -> Optional[tuple[str, tuple[str, ...]]]:
    """``GROUP=OPTION`` or ``GROUP=[A,B]`` naming options autoenc ships, as (group, options); None for any
    other override (a key, a sweep, a malformed one: Hydra names it)."""
    parsed = _parsed(override)
    if parsed is None or parsed.is_delete() or parsed.is_sweep_override() or parsed.package:
        return None
    group, options = parsed.key_or_group, _options(parsed.value())
    shipped = group_options(group) if "." not in group and "/" not in group else None
    return (group, options) if shipped is not None and set(options) <= set(shipped) else None


def _options(value: Any) -> tuple[str, ...]:
    """A group's value as its option names: ``gaussian`` -> (gaussian,), a list -> its names, null -> ()."""
    if value is None or value == "null":
        return ()
    return tuple(str(name) for name in value) if isinstance(value, (list, tuple)) else (str(value),)


def _parsed(override: str) -> Any:
    """One override as Hydra reads it (quotes and escapes undone); None if Hydra cannot read it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except HydraException:
        return None


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _resume_run(cfg: DictConfig, resume: str, overrides: list[str]) -> ResumePoint:
    state, saved = load_resume(resume)
    run_dir = run_folder_of(resume)
    choices = run_choices(run_dir)
    extended = False
    wanted_values, saved_values = with_shorthands_filled(cfg), with_shorthands_filled(saved)
    for override in overrides:
        key, choice = _override_key(override), _choice(override)
        if choice is not None and choices.get(choice[0]) == choice[1]:
            continue  # the run's own option: its keys, when given, are compared one by one
        wanted, current = OmegaConf.select(wanted_values, key), OmegaConf.select(saved_values, key)
        if choice is not None and key in choices and current is None:  # a preset (experiment=): no key of its own
            raise _changed(override, key, ",".join(choices[key]) or None)
        if key in RESUME_OVERRIDABLE or key.partition(".")[0] in RESUME_OVERRIDABLE:
            extended |= key == "trainer.epochs" and wanted > current
            OmegaConf.update(saved, key, wanted, merge=False)
        elif _plain(wanted) != _plain(current):
            raise _changed(override, key, _plain(current))
    if read_json(RunLayout(run_dir).metrics_json).get("status") == "completed" and not extended:
        epochs = OmegaConf.select(saved, "trainer.epochs")
        return ResumePoint(
            None,
            complete=f"'{run_dir}' is already complete; nothing to resume (add trainer.epochs=N with N > {epochs} "
            "to train it longer)",
        )
    return ResumePoint(saved, state)


def _changed(override: str, key: str, saved: Any) -> UserError:
    return UserError(
        f"resume continues a run with its saved config; '{override}' would change {key} (saved: {saved!r}); "
        f"only {', '.join(RESUME_OVERRIDABLE)} may change on resume"
    )


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_folder_of(resume: str) -> Path:
    path = Path(resume)
    return path.parent.parent if path.suffix == CHECKPOINT_SUFFIX else path


def resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    checkpoint = RunLayout(path).last_checkpoint if path.is_dir() else path
    if not checkpoint.is_file():
        raise UserError(
            f"resume='{resume}' has no checkpoint; give a run folder with {LAST_CHECKPOINT} or a {CHECKPOINT_SUFFIX} "
            "file"
        )
    return checkpoint


def load_resume(resume: str) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint to continue from and the run's own saved config; a checkpoint that another run
    wrote (a foreign last.pt copied in) is refused."""
    checkpoint = resume_checkpoint(resume)
    state = load_checkpoint(checkpoint)
    check_checkpoint_belongs(state, checkpoint, run_folder_of(resume), typed_config(state["config"], saved=True))
    return state, with_former_values(state["config"])


def saved_overrides(run_dir: Path) -> list[str]:
    path = RunLayout(run_dir).hydra_overrides
    return [str(item) for item in OmegaConf.load(path)] if path.is_file() else []


def without_resume(overrides: list[str]) -> list[str]:
    return [override for override in overrides if not override.startswith("resume=")]
