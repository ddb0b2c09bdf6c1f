"""``sparsity=none``: dense codes."""

from __future__ import annotations

from dataclasses import dataclass

from autoenc_cli.registry import register
from autoenc_cli.sparsity.base import Sparsity, SparsityConfig


@dataclass
class NoSparsityConfig(SparsityConfig):
    name: str = "none"


@register(NoSparsityConfig)
class NoSparsity(Sparsity):
    def __init__(self, config: NoSparsityConfig) -> None:
        super().__init__()
