"""Map exceptions from Hydra, OmegaConf and autoenc to the one line a user needs to read."""

from __future__ import annotations

import re
from typing import Optional

from autoenc_cli.configs import group_options
from autoenc_cli.errors import UserError
from autoenc_cli.schema.root import STACKED_GROUPS


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _raised_inside_config_libraries(error: BaseException) -> bool:
    """True when the innermost frame of the traceback belongs to hydra or omegaconf."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/hydra/" in filename or "/omegaconf/" in filename


def _parent_key(full_key: str) -> str:
    """``model.encoder[0].kernal`` -> ``model.encoder[0]``; ``model.encoder[0]`` -> ``model.encoder``."""
    return re.sub(r"(\.[^.\[\]]+|\[\d+\]|^[^.\[\]]+)$", "", full_key)


def _stacked_group_hint(group: str, name: str, selected: list[str], message: str) -> str:
    """``sparsity.topk.k`` without topk selected: how to select it. ``logger.figures_every``: a knob given
    without its option, which lives under each selected option's name."""
    from autoenc_cli.registry import REGISTRY

    options = REGISTRY.names(group)
    if name in options:
        return f"{message}; to add {name}, select {group}=[{','.join([*selected, name])}]"
    spelled = " ".join(f"{group}.{option}.{name}=..." for option in selected)
    where = f", e.g. {spelled}" if selected else f"; select one first, {group}={options[0]}"
    return (
        f"unknown key '{group}.{name}': '{name}' is not a {group} option ({', '.join(options)}); each option's "
        f"knobs live under its name{where}"
    )


def _composition_message(error: BaseException) -> Optional[str]:
    """An override that Hydra could not apply to the composed YAML, said in the user's terms: the keys
    that exist where an unknown one was given, the items a list has, the kind of value a key takes."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import ConfigAttributeError, ConfigIndexError, ConfigKeyError, ConfigTypeError

    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in struct" in str(cause):
        full_key, parent = str(cause.full_key), _parent_key(str(cause.full_key))
        if isinstance(cause.parent_node, DictConfig):
            keys = [str(key) for key in cause.parent_node.keys() if key != "hydra"]
            allowed = ", ".join(keys)
            message = (
                f"unknown key '{full_key}'; allowed keys{f' in {parent}' if parent else ''}: {allowed or '(none)'}"
            )
            if parent in STACKED_GROUPS:
                message = _stacked_group_hint(parent, full_key.split(".")[1], keys, message)
            return message
    if isinstance(cause, ConfigIndexError) and isinstance(cause.parent_node, ListConfig):
        items = len(cause.parent_node)
        listed = _parent_key(str(cause.full_key))
        return (
            f"{cause.full_key} does not exist: {listed} has {items} item{'' if items == 1 else 's'}; "
            f"set the whole list instead, e.g. {listed}=[...]"
        )
    override = re.match(r"Error merging override \+{0,2}([^=\s]+)=(.*)$", _first_line(error))
    if isinstance(cause, ConfigTypeError) and override and override.group(2)[:1] in ("[", "{"):
        expected = "a mapping {key: value, ...}" if override.group(2).startswith("[") else "a list [...]"
        return f"{override.group(1)}={override.group(2)} has the wrong type; expected {expected}"
    return None


def one_line_or_none(error: BaseException) -> Optional[str]:
    """The one-line message for a user mistake, or None for an unexpected error (a bug)."""
    import yaml
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, yaml.YAMLError):  # a user's YAML file (--config-dir) that does not parse
        return "malformed YAML: " + "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, OSError) and error.filename:  # e.g. an output folder that cannot be written
        return f"cannot write or read '{error.filename}': {error.strerror or error}"
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = error.options if error.options is not None else group_options(group)
        if options is not None:
            choices = ", ".join(sorted(options)) or "(none)"
            return f"{group}={option} is not an option; choose one of {choices}"
    if isinstance(error, OverrideParseException):
        return f"malformed override: {_first_line(error)}"
    if isinstance(error, (ValueError, TypeError, KeyError)) and _raised_inside_config_libraries(error):
        # Hydra sometimes rejects a malformed override with a plain ValueError while composing.
        return f"invalid override or config: {_first_line(error)}"
    composition = _composition_message(error) if isinstance(error, ConfigCompositionException) else None
    if composition is not None:
        return composition
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        message = _first_line(error)
        cause = error.__cause__
        if cause is not None and _first_line(cause) and _first_line(cause) not in message:
            message = f"{message} {_first_line(cause)}"
        return message
    return None


def with_sweep_hint(message: str, argv: list[str]) -> str:
    """An unknown key in a multirun that sweeps over presets (``-m experiment=a,b data.path=...``): Hydra
    composes the sweep's base config without the swept presets, so a key only they make valid is unknown
    there; say how to give the group they select."""
    multirun = "-m" in argv or "--multirun" in argv
    swept = any(arg.startswith("experiment=") and any(mark in arg for mark in (",", "glob(")) for arg in argv)
    if not (multirun and swept and message.startswith("unknown key '")):
        return message
    from autoenc_cli.schema.root import GROUPS, STACKED_GROUPS

    group = message.removeprefix("unknown key '").split(".")[0].split("'")[0]
    if group not in GROUPS or group in STACKED_GROUPS:  # a typo, or a group whose options the presets list
        return message
    return (
        f"{message} (a sweep over experiment= composes its base config without the swept presets: select the "
        f"{group} option they use on the command line too, e.g. {group}=<option>)"
    )
