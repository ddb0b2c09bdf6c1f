"""Field helpers that attach range and choice rules to dataclass fields, and one checker for them.

Rules live next to the field they guard, so every numeric knob is range-checked by the same code
and the error names the full dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from autoenc_cli.errors import ConfigError

_MISSING = dataclasses.MISSING


def number(
    default: Any = _MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A numeric field with bounds; ``None`` values skip the check (for optional knobs)."""
    bounds = {name: value for name, value in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if value is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def choice(default: Any, options: Sequence[str]) -> Any:
    """A string field limited to ``options``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


def describe_bounds(bounds: dict[str, float]) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[name]} {value:g}" for name, value in bounds.items())


def _check_field(field: dataclasses.Field, value: Any) -> None:
    if value is None:
        return
    bounds = field.metadata.get("bounds")
    if bounds:
        ok = all(
            {"gt": value > limit, "ge": value >= limit, "lt": value < limit, "le": value <= limit}[name]
            for name, limit in bounds.items()
        )
        if not ok:
            raise ConfigError(field.name, value, f"must be {describe_bounds(bounds)}")
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(field.name, value, f"choose one of {', '.join(choices)}")


def check_tree(node: Any) -> None:
    """Check field rules and each dataclass's own ``check()`` recursively; errors carry full keys."""
    if isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            with_prefix(f"[{index}]", lambda item=item: check_tree(item))
        return
    if isinstance(node, dict):  # a stacked group's members, by name
        for name, item in node.items():
            with_prefix(str(name), lambda item=item: check_tree(item))
        return
    if not dataclasses.is_dataclass(node):
        return
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        _check_field(field, value)
        with_prefix(field.name, lambda value=value: check_tree(value))
    own_check = getattr(node, "check", None)
    if callable(own_check):
        own_check()


def with_prefix(prefix: str, action: Any) -> Any:
    """Run ``action``; a ConfigError it raises gets ``prefix`` in front of its key."""
    try:
        return action()
    except ConfigError as error:
        raise error.within(prefix) from None
