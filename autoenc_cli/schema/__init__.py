"""Structured-config schemas: typed dataclasses that validate every config group."""

from autoenc_cli.schema.fields import check_tree, choice, number
from autoenc_cli.schema.root import GroupConfig, TrainConfig, TrainerConfig

__all__ = ["GroupConfig", "TrainConfig", "TrainerConfig", "check_tree", "choice", "number"]
