"""The one registry: every config-group option maps its ``name`` to a schema and a builder.

A YAML option such as ``configs/model/fc.yaml`` carries ``name: fc``; the registry finds the
dataclass that validates it and the function that builds it. New models, sparsities, noises,
data sets or schedules plug in with one decorator, and a user's own YAML in ``--config-dir``
can reuse any registered name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from autoenc_cli.errors import ConfigError

# Modules whose import registers components. Imported lazily so ``autoenc --help`` stays quick.
COMPONENT_MODULES = (
    "autoenc_cli.models.layers",
    "autoenc_cli.models.fc",
    "autoenc_cli.models.conv",
    "autoenc_cli.data.embedded",
    "autoenc_cli.data.torchvision_sets",
    "autoenc_cli.data.files",
    "autoenc_cli.training.losses",
    "autoenc_cli.training.optimizers",
    "autoenc_cli.training.schedules",
    "autoenc_cli.sparsity.none",
    "autoenc_cli.sparsity.hard",
    "autoenc_cli.sparsity.penalties",
    "autoenc_cli.noise.none",
    "autoenc_cli.noise.corruptions",
)


@dataclass(frozen=True)
class Entry:
    group: str
    name: str
    builder: Callable[..., Any]
    schema: Optional[type]


class Registry:
    def __init__(self, modules: tuple[str, ...] = ()) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._modules = modules
        self._loaded = False

    def register(self, group: str, name: str, schema: Optional[type] = None) -> Callable:
        """Decorator: ``@register("model", "fc", FCModelConfig)`` on the builder function or class."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            key = (group, name)
            if key in self._entries and self._entries[key].builder is not builder:
                raise ValueError(f"{group} '{name}' is registered twice")
            self._entries[key] = Entry(group, name, builder, schema)
            return builder

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def names(self, group: str) -> list[str]:
        self._load()
        return sorted(name for entry_group, name in self._entries if entry_group == group)

    def groups(self) -> list[str]:
        self._load()
        return sorted({group for group, _ in self._entries})

    def entry(self, group: str, name: Any) -> Entry:
        self._load()
        found = self._entries.get((group, name))
        if found is None:
            raise ConfigError(f"{group}.name", name, f"choose one of {', '.join(self.names(group))}")
        return found

    def build(self, group: str, config: Any, *args: Any, **kwargs: Any) -> Any:
        """Build the component that ``config`` (a schema instance with a ``name``) describes."""
        return self.entry(group, config.name).builder(config, *args, **kwargs)


REGISTRY = Registry(COMPONENT_MODULES)
register = REGISTRY.register
