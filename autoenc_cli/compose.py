"""A config from KEY=VALUE overrides, composed and checked: the one way every command gets its config.

``compose`` composes a command's packaged YAML (``train``, ``tune``, ``eval``, ...) with Hydra's compose
API. ``run_config`` is what ``autoenc train OVERRIDES`` trains, wherever its config is composed (here, by
Hydra's app, by Hydra for each job of a sweep, from a resumed run's saved config): a key given twice
(``k=5 sparsity.topk.k=16``) refused, then every type and rule checked (``autoenc_cli.schema``); the
callers need nothing else.
``sweep_jobs`` expands a sweep's overrides into its jobs'.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from autoenc_cli.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from autoenc_cli.schema import TrainConfig

CONFIG_MODULE = "autoenc_cli.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"

# Hydra's command-line flags that take a value: the next argument, unless written --flag=value. (This module
# imports Hydra and OmegaConf where they are used, so ``autoenc --help`` reads this without loading them.)
HYDRA_VALUE_FLAGS = frozenset(
    {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
    | {"--experimental-rerun"}
)
HYDRA_INFO_VALUES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})  # --info X

# Config keys that name files: stored absolute, so a run, its eval and its reconstruct work from any folder.
PATH_KEYS = ("data.path", "data.root")

_HYDRA = threading.Lock()  # Hydra's global state is not for threads (tune's workers compose trials)


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """The packaged ``config_name``.yaml with ``overrides``; a mistake in an override is one line, and so is
    a run's key given twice (the shorthand rule: ``k=5 sparsity.topk.k=16``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from autoenc_cli.schema.check import check_shorthands

    if config_name == "train":
        check_shorthands(list(overrides))

    with _HYDRA, initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        except Exception as error:  # noqa: BLE001 - Hydra's errors become one line; a bug keeps its traceback
            from autoenc_cli.error_report import one_line_or_none

            message = one_line_or_none(error)
            if message is None:
                raise
            raise UserError(message) from None


def run_config(overrides: Sequence[str], composed: Optional[DictConfig] = None) -> "TrainConfig":
    """What ``autoenc train OVERRIDES`` trains, typed and checked whole. ``composed``: its config where it was
    composed already (by Hydra's app or loader for a sweep's job, or a resumed run's saved config); the
    packaged train.yaml with the overrides otherwise."""
    from autoenc_cli.schema.check import check_shorthands
    from autoenc_cli.schema.resolve import resolve

    check_shorthands(list(overrides))  # a key given twice is named as such, before Hydra silently keeps the last
    cfg = run_part(composed if composed is not None else compose("train", overrides))
    return resolve(with_user_paths(cfg))


def run_part(cfg: DictConfig) -> DictConfig:
    """A job's config without Hydra's own node (which only a running Hydra job can resolve)."""
    from omegaconf import OmegaConf

    if "hydra" not in cfg:
        return cfg
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """``cfg`` (changed in place) with its file paths absolute: how a run stores them, so its eval and its
    reconstruct work from any folder."""
    return _with_paths(cfg, lambda path: path.expanduser().absolute())


def with_user_paths(cfg: DictConfig) -> DictConfig:
    """``cfg`` (changed in place) with ``~`` in its file paths expanded, as a shell would; a path stays
    relative (the check's messages name it as it was given)."""
    return _with_paths(cfg, Path.expanduser)


def _with_paths(cfg: DictConfig, change: Callable[[Path], Path]) -> DictConfig:
    from omegaconf import OmegaConf

    for key in PATH_KEYS:
        if OmegaConf.select(cfg, key, throw_on_missing=False) is None or OmegaConf.is_missing(cfg.data, key[5:]):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, str(change(Path(value))), merge=False)
    return cfg


def sweep_jobs(overrides: Sequence[str], config_loader: Optional[Any] = None) -> list[list[str]]:
    """A sweep's overrides (``k=5,16,32``, ``'experiment=glob(tutorial_*)'``) as one override list per job,
    in the order Hydra's basic sweeper runs them; a glob needs the ``config_loader`` to list a group."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise UserError(f"'{override.input_line}': an interval sweep needs a search; give the values")
    return [list(job) for job in itertools.product(*choices.values())]
