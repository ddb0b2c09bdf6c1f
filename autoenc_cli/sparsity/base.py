"""The interface every sparsity option implements, and the base of their configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from autoenc_cli.schema import GroupConfig


@dataclass
class SparsityConfig(GroupConfig):
    group: ClassVar[str] = "sparsity"


class Sparsity(nn.Module):
    """Transforms codes in the forward pass and may add a penalty on them to the loss.

    ``forward`` is applied to the encoder's output (identity here); ``penalty`` returns the weighted
    term to add to the loss, or None when the option has none.
    """

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return code

    def penalty(self, code: torch.Tensor) -> Optional[torch.Tensor]:
        return None
