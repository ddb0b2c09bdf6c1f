"""Turn a composed Hydra config into typed, checked schema objects, with one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema.check import check_config
from autoenc_cli.schema.root import FORMER_GROUPS, GROUPS, SHORTHANDS, STACKED_GROUPS, TrainConfig, shorthand_field


def resolve(cfg: DictConfig) -> TrainConfig:
    """The typed run config, with every rule checked (``check_config``): what ``autoenc train`` runs."""
    config = typed_config(cfg)
    check_config(config)
    return config


def typed_config(cfg: DictConfig | dict, literal: bool = False, saved: bool = False) -> TrainConfig:
    """Type every group against its registered schema, without the rules that look at files.

    A saved run's config was checked when it trained; loading it needs only this. ``literal``: ``cfg`` is
    plain data from a file autoenc did not write (an export's config.json): no ``${...}`` in it is
    resolved, every string is kept as written (``typed`` resolves nothing either). ``saved``: ``cfg`` is a
    run's (or an export's) own, maybe written before some keys existed; a key it lacks takes the value its
    option had before the key was added (``former_defaults``), so the run loads as the model it trained.
    """
    try:
        if literal:
            plain = copy.deepcopy(cfg)
        else:
            plain = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise UserError(f"{error.full_key} must be set, e.g. {error.full_key}=...") from None
    assert isinstance(plain, dict)
    groups = {group: plain.pop(group, None) for group in GROUPS}
    if saved:
        groups.update({group: copy.deepcopy(FORMER_GROUPS[group]) for group in FORMER_GROUPS if groups[group] is None})
    plain.pop("hydra", None)
    config = typed(TrainConfig, plain, "")
    for group, node in groups.items():
        if group in STACKED_GROUPS:
            setattr(config, group, typed_members(group, node))
            continue
        if not isinstance(node, dict):
            raise ConfigError(group, node, f"must be a config group; choose one of {', '.join(REGISTRY.names(group))}")
        schema = REGISTRY.config_class(group, node.get("name"))
        setattr(config, group, typed(schema, {**former_values(schema), **node} if saved else node, group))
    _apply_shorthands(config)
    return config


def with_former_values(saved: Any) -> DictConfig:
    """A run's saved config (as its checkpoint holds it) with every key its options lack at the value it had
    before the key existed (``former_values``): the config a resumed run continues with."""
    node = OmegaConf.create(saved)
    for group, former in FORMER_GROUPS.items():
        if node.get(group) is None:
            node[group] = copy.deepcopy(former)
    for group in GROUPS:
        option = node.get(group)
        if group in STACKED_GROUPS or not isinstance(option, DictConfig) or "name" not in option:
            continue
        for key, value in former_values(REGISTRY.config_class(group, option.name)).items():
            if key not in option:
                option[key] = value
    return node


def former_values(schema: type) -> dict[str, Any]:
    """What the option's keys meant in configs saved before they existed or before their defaults changed
    (the option's ``former_defaults``; none for most)."""
    return copy.deepcopy(getattr(schema, "former_defaults", {}))


def literal_strings(value: Any) -> Any:
    """A copy of plain data whose strings OmegaConf's resolution gives back as written: each ``${``
    escaped, with the backslashes before it doubled (OmegaConf's escaping), so ``${oc.env:HOME}`` stays
    those characters and never reads the environment."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda match: match.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {key: literal_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [literal_strings(item) for item in value]
    return value


def typed_members(group: str, node: Any) -> dict[str, Any]:
    """A stacked group (``sparsity=[topk,lifetime]`` composes ``{topk: {...}, lifetime: {...}}``): each
    member typed by its key, in the order listed. An empty group (``sparsity=none``) has no members."""
    if node is None:
        return {}
    if isinstance(node, dict) and isinstance(node.get("name"), str):  # a config saved before stacking
        node = {node["name"]: {key: value for key, value in node.items() if key != "name"}}
    allowed = f"choose from {', '.join(REGISTRY.names(group))}, e.g. {group}=[{REGISTRY.names(group)[0]}]"
    if not isinstance(node, dict):
        raise ConfigError(group, node, f"must be a mapping of {group} options; {allowed}")
    members = {}
    for name, member in node.items():
        if name not in REGISTRY.names(group):
            raise UserError(f"{group}.{name} is not a {group} option; {allowed}")
        member = dict(member or {})
        if member.pop("name", name) != name:
            raise UserError(f"{group}.{name}.name: a {group} option's name is its key ({name}); leave name out")
        members[name] = typed(REGISTRY.config_class(group, name), {**member, "name": name}, f"{group}.{name}")
    return members


def stack_label(members: dict[str, Any]) -> str:
    """How a user selects these members: ``none``, ``topk`` or ``[topk,lifetime]``."""
    names = list(members)
    return "none" if not names else names[0] if len(names) == 1 else f"[{','.join(names)}]"


def _apply_shorthands(config: TrainConfig) -> None:
    """``k=16`` sets ``sparsity.<member>.k`` on the one member that has ``k``; the top-level value wins
    over the member's default. No member with the key, or several, is refused: never a guess."""
    set_by: dict[tuple[str, str], str] = {}  # (option, key) -> the shorthand that set it
    for key, group in SHORTHANDS.items():
        value, members = getattr(config, key), getattr(config, group)
        if value is None:
            continue
        value = int(value) if isinstance(value, float) and value.is_integer() else value
        owners = {name: field for name, member in members.items() if (field := shorthand_field(key, member))}
        label = stack_label(members)
        what = "l0 to set (the k of topk/batch_topk, the target_l0 of jumprelu/l1)" if key == "l0" else f"'{key}'"
        if not owners:
            raise ConfigError(key, value, f"{group}={label} has no {what}; choose a {group} option that does")
        if len(owners) > 1:
            spelled = " or ".join(f"{group}.{owner}.{field}={value}" for owner, field in owners.items())
            raise UserError(
                f"{key}={value} is ambiguous: {group}={label} has {what} in {' and '.join(owners)}; give {spelled}"
            )
        ((owner, field),) = owners.items()
        if (owner, field) in set_by and getattr(members[owner], field) != value:
            earlier, target = set_by[(owner, field)], f"{group}.{owner}.{field}"
            raise UserError(f"{earlier}={getattr(config, earlier)} and {key}={value} both set {target}; give only one")
        whole = isinstance(getattr(members[owner], field), int)
        if whole and not isinstance(value, int):
            raise ConfigError(key, value, f"sets {group}.{owner}.{field}, a whole number of units; give a whole number")
        setattr(members[owner], field, value if whole else float(value))
        set_by[(owner, field)] = key


def with_shorthands_filled(cfg: DictConfig) -> DictConfig:
    """A copy of an untyped run config in which each shorthand (``k``) and the member key it sets
    (``sparsity.topk.k``) hold the same value, whichever of the two was given: what a resume compares, so a
    value re-stated in the other spelling is the same value. Where no single member owns the key, as typing
    would refuse, the copy keeps what it had."""
    filled = copy.deepcopy(cfg)
    with open_dict(filled):
        for key, group in SHORTHANDS.items():
            members = filled.get(group) or {}
            owners = [(name, field) for name in members if (field := _shorthand_owner_field(key, group, name))]
            if len(owners) != 1:
                continue
            ((owner, field),) = owners
            if filled.get(key) is None:
                filled[key] = members[owner].get(field)
            else:
                members[owner][field] = filled[key]
    return filled


def _shorthand_owner_field(key: str, group: str, option: str) -> Optional[str]:
    try:
        return shorthand_field(key, REGISTRY.config_class(group, option))
    except ConfigError:  # not an option: typing the config names it
        return None


def typed(schema: type, node: dict, path: str) -> Any:
    """``node`` (plain, already resolved values) typed against ``schema``; to_object resolves once more,
    so strings are escaped first: a value holding ``${`` is that text, never a second interpolation."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), literal_strings(node))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        # OmegaConf reports a mistake inside a list item by the item's own key (``width``); typing the
        # items one by one finds it under its full path (``model.encoder[0].width``).
        _type_list_items(schema, node, path)
        raise _one_line(error, schema, path) from None


def _join(path: str, key: str) -> str:
    return f"{path}{key}" if not path or key.startswith("[") else f"{path}.{key}"


def _type_list_items(schema: type, node: Any, path: str) -> None:
    """Type each mapping in a list-of-dataclass field on its own; raises the first item's error."""
    if not (dataclasses.is_dataclass(schema) and isinstance(node, dict)):
        return
    for name, annotation in _hints(schema).items():
        item_schema = _list_item(annotation)
        items = node.get(name)
        if item_schema is None or not dataclasses.is_dataclass(item_schema) or not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if isinstance(item, dict):
                typed(item_schema, item, f"{_join(path, name)}[{index}]")


def _hints(schema: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve only costs the better message
        return {}
    return {field.name: hints.get(field.name, Any) for field in dataclasses.fields(schema)}


def _optional_of(annotation: Any) -> Any:
    """``Optional[X]`` -> X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _list_item(annotation: Any) -> Any:
    annotation = _optional_of(annotation)
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def field_type(schema: type, key: str) -> Any:
    """The annotation of a dotted key with list indices (``encoder[0].width``) in a schema; None if unknown."""
    annotation: Any = schema
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        if part.startswith("["):
            annotation = _list_item(annotation)
        else:
            inner = _optional_of(annotation)
            annotation = _hints(inner).get(part) if dataclasses.is_dataclass(inner) else None
        if annotation is None:
            return None
    return annotation


PLAIN_TYPES = {bool: "boolean (true or false)", int: "integer", float: "float", str: "string"}
PLURALS = {bool: "booleans", int: "integers", float: "floats", str: "strings"}


def describe_type(annotation: Any) -> Optional[str]:
    """What a user must write for a field of this type, in words; None where the type says nothing."""
    inner = _optional_of(annotation)
    if inner is not annotation:
        described = describe_type(inner)
        return f"{described} or null" if described else None
    if annotation in PLAIN_TYPES:
        return PLAIN_TYPES[annotation]
    if dataclasses.is_dataclass(annotation):
        return f"a mapping with keys {', '.join(field.name for field in dataclasses.fields(annotation))}"
    item = _list_item(annotation)
    if item in PLURALS:
        return f"a list of {PLURALS[item]}"
    if item is not None and dataclasses.is_dataclass(item):
        keys = ", ".join(field.name for field in dataclasses.fields(item))
        return f"a list of mappings with keys {keys}, e.g. [{{{dataclasses.fields(item)[0].name}: ...}}]"
    return None


def _one_line(error: OmegaConfBaseException, schema: type, path: str) -> UserError:
    key = str(error.full_key or error.key or "")
    full_key = _join(path, key) if key else path
    if isinstance(error, MissingMandatoryValue):
        return UserError(f"{full_key} must be set, e.g. {full_key}=...")
    if isinstance(error, ConfigKeyError):
        # The keys that exist where the unknown one was given (``trainer`` for ``trainer.epoch``).
        parent = key.rpartition(".")[0] if "." in key else ""
        owner = _optional_of(field_type(schema, parent) if parent else schema)
        if dataclasses.is_dataclass(owner):
            allowed = ", ".join(field.name for field in dataclasses.fields(owner))
            where = _join(path, parent) if parent else path
        else:
            allowed, where = ", ".join(OmegaConf.structured(schema).keys()), path
        return UserError(f"unknown key '{full_key}'; allowed keys{f' in {where}' if where else ''}: {allowed}")
    if isinstance(error, ValidationError):
        expected = describe_type(field_type(schema, key)) if key else None
        if expected is None:  # OmegaConf says "Value 'abc' of type 'str' could not be converted to Float".
            converted = re.search(r"converted to (\w+)", str(error))
            expected = converted.group(1).lower() if converted else None
        wanted = f"; expected {expected}" if expected else ""
        return UserError(f"{full_key}={error.value!r} has the wrong type{wanted}")
    return UserError(f"{full_key}: {str(error).splitlines()[0]}")
