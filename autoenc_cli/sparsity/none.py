"""``sparsity=none``: dense codes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from autoenc_cli.registry import register
from autoenc_cli.schema.root import GroupConfig
from autoenc_cli.sparsity.base import Sparsity


@dataclass
class NoSparsityConfig(GroupConfig):
    name: str = "none"


@register("sparsity", "none", NoSparsityConfig)
def build_no_sparsity(config: NoSparsityConfig, model: nn.Module) -> Sparsity:
    return Sparsity()
