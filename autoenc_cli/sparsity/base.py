"""The interface every sparsity option implements."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Sparsity(nn.Module):
    """Transforms codes in the forward pass and may add a penalty on them to the loss.

    ``forward`` is applied to the encoder's output (identity here); ``penalty`` returns the weighted
    term to add to the loss, or None when the option has none.
    """

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return code

    def penalty(self, code: torch.Tensor) -> Optional[torch.Tensor]:
        return None
