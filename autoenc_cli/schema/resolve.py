"""Turn a composed Hydra config into typed, checked schema objects, with one-line errors."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema.check import check_config
from autoenc_cli.schema.root import GROUPS, SHORTHANDS, TrainConfig


def resolve(cfg: DictConfig) -> TrainConfig:
    """The typed run config, with every rule checked (``check_config``): what ``autoenc train`` runs."""
    config = typed_config(cfg)
    check_config(config)
    return config


def typed_config(cfg: DictConfig | dict) -> TrainConfig:
    """Type every group against its registered schema, without the rules that look at files.

    A saved run's config was checked when it trained; loading it needs only this.
    """
    try:
        plain = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise UserError(f"{error.full_key} must be set, e.g. {error.full_key}=...") from None
    assert isinstance(plain, dict)
    groups = {group: plain.pop(group, None) for group in GROUPS}
    plain.pop("hydra", None)
    config = typed(TrainConfig, plain, "")
    for group, node in groups.items():
        if not isinstance(node, dict):
            raise ConfigError(group, node, f"must be a config group; choose one of {', '.join(REGISTRY.names(group))}")
        setattr(config, group, typed(REGISTRY.config_class(group, node.get("name")), node, group))
    _apply_shorthands(config)
    return config


def _apply_shorthands(config: TrainConfig) -> None:
    """``k=16`` sets ``sparsity.k``: the top-level value wins over the group's default."""
    for key, group in SHORTHANDS.items():
        value, target = getattr(config, key), getattr(config, group)
        if value is None:
            continue
        if not hasattr(target, key):
            raise ConfigError(key, value, f"{group}={target.name} has no '{key}'; choose a {group} option that does")
        setattr(target, key, value)


def typed(schema: type, node: dict, path: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise _one_line(error, schema, path) from None


def _one_line(error: OmegaConfBaseException, schema: type, path: str) -> UserError:
    key = str(error.full_key or error.key or "")
    full_key = f"{path}.{key}" if path and key else path or key
    if isinstance(error, MissingMandatoryValue):
        return UserError(f"{full_key} must be set, e.g. {full_key}=...")
    if isinstance(error, ConfigKeyError):
        allowed = ", ".join(OmegaConf.structured(schema).keys())
        return UserError(f"unknown key '{full_key}'; allowed keys{f' in {path}' if path else ''}: {allowed}")
    if isinstance(error, ValidationError):
        # OmegaConf says "Value 'abc' of type 'str' could not be converted to Float".
        expected = re.search(r"converted to (\w+)", str(error))
        wanted = f"; expected {expected.group(1).lower()}" if expected else ""
        return UserError(f"{full_key}={error.value!r} has the wrong type{wanted}")
    return UserError(f"{full_key}: {str(error).splitlines()[0]}")
