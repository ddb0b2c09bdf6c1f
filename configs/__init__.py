"""Hydra config groups for autoenc: one folder per group, one YAML file per option. This folder ships inside
the package as autoenc_cli.configs."""

from __future__ import annotations

from importlib import resources
from typing import Optional


def group_options(group: str) -> Optional[list[str]]:
    """The packaged YAML options of the config group ``group`` (None: autoenc ships no such group)."""
    folder = resources.files(__name__) / group
    if not group or not folder.is_dir():
        return None
    return [entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml")]
