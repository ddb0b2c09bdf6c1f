"""The one registry: each config-group option is a config dataclass and the component built from it.

An option is defined once, where its component lives::

    @dataclass
    class TopKConfig(SparsityConfig):
        name: str = "topk"
        k: int = number(16, ge=1)

    @register(TopKConfig)
    class TopK(Sparsity):
        def __init__(self, config: TopKConfig) -> None: ...

The dataclass is the option's schema and defaults; its ``group`` (from the base class) and ``name``
(the field default) are the registry key; the component is constructed from the config alone (plus
what only the run knows, such as the input shape). Options are found by importing every module of
the group's package (``GROUP_PACKAGES``), so a new option is one Python file and one YAML preset.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from autoenc_cli.errors import ConfigError

# Where each config group's options live. A package is searched module by module.
GROUP_PACKAGES = {
    "data": "autoenc_cli.data",
    "model": "autoenc_cli.models",
    "loss": "autoenc_cli.losses",
    "optimizer": "autoenc_cli.optimizers",
    "schedule": "autoenc_cli.schedules",
    "sparsity": "autoenc_cli.sparsity",
    "noise": "autoenc_cli.noise",
    "augment": "autoenc_cli.augment",
    "logger": "autoenc_cli.loggers",
}


def option_name(config_class: type) -> str:
    """The ``name`` field's default: the option's name in its group."""
    for field in dataclasses.fields(config_class):
        if field.name == "name" and isinstance(field.default, str):
            return field.default
    raise TypeError(f"{config_class.__name__} needs a 'name' field with a default")


@dataclass(frozen=True)
class Entry:
    group: str
    name: str
    config_class: type
    component: Callable[..., Any]


class Registry:
    def __init__(self, packages: dict[str, str] | None = None) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._packages = dict(packages or {})
        self._discovered = False

    def register(self, config_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator for the component (class or factory) that ``config_class`` configures."""

        def decorate(component: Callable[..., Any]) -> Callable[..., Any]:
            key = (config_class.group, option_name(config_class))
            known = self._entries.get(key)
            if known is not None and (known.component, known.config_class) != (component, config_class):
                raise ValueError(f"{key[0]} '{key[1]}' is registered twice")
            self._entries[key] = Entry(*key, config_class, component)
            return component

        return decorate

    def _discover(self) -> None:
        """Import every module of every group package once (lazily, so ``--help`` stays fast)."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self._packages.values():
            package = importlib.import_module(package_name)
            for module in pkgutil.iter_modules(getattr(package, "__path__", []), f"{package_name}."):
                importlib.import_module(module.name)

    def names(self, group: str) -> list[str]:
        self._discover()
        return sorted(name for entry_group, name in self._entries if entry_group == group)

    def groups(self) -> list[str]:
        self._discover()
        return sorted({group for group, _ in self._entries})

    def entry(self, group: str, name: Any) -> Entry:
        self._discover()
        found = self._entries.get((group, name))
        if found is None:
            raise ConfigError(f"{group}.name", name, f"choose one of {', '.join(self.names(group))}")
        return found

    def config_class(self, group: str, name: Any) -> type:
        return self.entry(group, name).config_class

    def build(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        """The component that ``config`` (a registered config dataclass instance) describes."""
        return self.entry(type(config).group, config.name).component(config, *args, **kwargs)


REGISTRY = Registry(GROUP_PACKAGES)
register = REGISTRY.register
