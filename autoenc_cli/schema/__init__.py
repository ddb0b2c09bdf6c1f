"""Structured-config schemas: typed dataclasses that validate every config group."""

from autoenc_cli.schema.fields import choice, check_tree, number
from autoenc_cli.schema.root import TrainConfig, TrainerConfig

__all__ = ["TrainConfig", "TrainerConfig", "check_tree", "choice", "number"]
