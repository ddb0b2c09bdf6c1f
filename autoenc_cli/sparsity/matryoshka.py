"""Matryoshka SAEs (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the dictionary each trained
to reconstruct the input on their own, so the first units learn general features and later ones refine
them instead of absorbing the general ones (feature absorption).

The option adds, for each prefix size m in ``prefixes``, the squared error of the reconstruction from the
code's first m units alone (the rest zeroed) to the loss; the whole code's reconstruction is the loss
group's own term. It combines with the option that chooses which units are active:
``sparsity=[batch_topk,matryoshka]`` is Bussmann et al.'s Matryoshka BatchTopK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.base import Sparsity, SparsityConfig

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput


@dataclass
class MatryoshkaConfig(SparsityConfig):
    name: str = "matryoshka"
    # sizes of the nested dictionaries, strictly increasing and below code_dim (the whole code is the last)
    prefixes: list[int] = field(default_factory=lambda: [8, 16, 32])
    weight: float = number(1.0, ge=0)  # weight of each prefix's reconstruction error (1: Bussmann et al.'s sum)

    def check(self) -> None:
        if not self.prefixes:
            raise ConfigError("prefixes", [], "give at least one prefix size (e.g. [128,512,1024])")
        for index, (smaller, larger) in enumerate(zip(self.prefixes, self.prefixes[1:])):
            if larger <= smaller:
                raise ConfigError(f"prefixes[{index + 1}]", larger, f"sizes must increase (it follows {smaller})")
        if self.prefixes[0] < 1:
            raise ConfigError("prefixes[0]", self.prefixes[0], "sizes must be >= 1")

    def check_with(self, facts: Facts) -> None:
        if self.prefixes[-1] >= facts.model.code_dim:
            raise ConfigError(
                f"prefixes[{len(self.prefixes) - 1}]",
                self.prefixes[-1],
                f"must be below the code size model.code_dim={facts.model.code_dim} (the whole code comes last)",
            )


def prefix_logits(model: "Autoencoder", code: torch.Tensor, prefixes: tuple[int, ...]) -> torch.Tensor:
    """The decoder's logits from each prefix of ``code`` alone: (len(prefixes), batch, *input_shape).

    For an affine decoder (a sparse autoencoder's dictionary), one decoder pass's arithmetic: each group of
    units between two prefix ends writes its part, and the parts are summed cumulatively. Otherwise the
    decoder runs once on every prefix's masked code (in one batched call)."""
    affine = model.affine_decoder()
    batch = code.shape[0]
    if affine is not None:
        weight, bias = affine
        starts = (0, *prefixes[:-1])
        parts = torch.stack([code[:, a:b] @ weight[:, a:b].t() for a, b in zip(starts, prefixes)])
        return (parts.cumsum(dim=0) + bias).view(len(prefixes), batch, *model.input_shape)
    units = torch.arange(code.shape[1], device=code.device)
    masks = (units < torch.tensor(prefixes, device=code.device)[:, None]).to(code.dtype)  # (prefixes, code_dim)
    masked = (code.unsqueeze(0) * masks.unsqueeze(1)).reshape(len(prefixes) * batch, -1)
    return model.decode_logits(masked).view(len(prefixes), batch, *model.input_shape)


@register(MatryoshkaConfig)
class Matryoshka(Sparsity):
    """weight x the sum over prefixes of the mean squared error of the prefix's reconstruction."""

    member_fields = ("weight",)

    def __init__(self, config: MatryoshkaConfig, code_dim: int) -> None:
        super().__init__()
        self.prefixes, self.weight = tuple(config.prefixes), config.weight

    def penalty(self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder") -> torch.Tensor:
        reconstructions = model.output_activation(prefix_logits(model, output.code, self.prefixes))
        errors = (reconstructions - target.unsqueeze(0)).pow(2).flatten(start_dim=2).mean(dim=2)  # (prefixes, batch)
        return self.weight * errors.mean(dim=1).sum()

    def extra_repr(self) -> str:
        return f"prefixes={list(self.prefixes)}"
