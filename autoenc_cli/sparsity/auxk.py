"""The auxiliary loss that revives dead units (AuxK, Gao et al. 2024), shared by the hard options.

A unit that has not fired for ``dead_after`` training samples counts as dead. Each step, the
``aux_k`` largest encoder outputs among the dead units form an auxiliary code; the loss asks what
that code adds to the (detached) reconstruction to explain the residual, so dead units get gradient
towards what the live ones miss. It is zero when no unit is dead, and there is no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from autoenc_cli.schema import number
from autoenc_cli.sparsity.base import Sparsity

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput


@dataclass
class AuxKFields:
    """The AuxK knobs of an option's config (mixed into TopKConfig and BatchTopKConfig)."""

    aux_k: int = number(32, ge=1)  # dead units allowed into the auxiliary code of each sample
    aux_coef: float = number(1 / 32, ge=0)  # weight of the auxiliary loss (Gao et al.'s 1/32); 0 turns it off
    dead_after: int = number(1600, ge=1)  # training samples without firing after which a unit counts as dead


# Training steps between host reads of "is any unit dead?". The auxiliary loss, which costs a second
# decoder pass, is computed only while one is: one device sync per CHECK_EVERY steps instead of an
# auxiliary pass on every step (most runs have no dead unit most of the time).
CHECK_EVERY = 32


class AuxKLoss(nn.Module):
    def __init__(self, fields: AuxKFields, code_dim: int) -> None:
        super().__init__()
        self.aux_k, self.coef, self.dead_after = min(fields.aux_k, code_dim), fields.aux_coef, fields.dead_after
        # Saved with the model, so a resumed run knows which units were dead and continues bit for bit.
        self.register_buffer("samples_since_fired", torch.zeros(code_dim, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps observed
        self.register_buffer("any_dead", torch.zeros((), dtype=torch.bool))  # as of the last check
        self._host: Optional[list] = None  # [steps, any_dead] mirrored on the host; read once after a load

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host = None

    def _mirror(self) -> list:
        if self._host is None:
            self._host = [int(self.steps), bool(self.any_dead)]
        return self._host

    @property
    def steps_taken(self) -> int:
        """Training steps observed, without a device sync (k annealing reads it every step)."""
        return self._mirror()[0]

    @torch.no_grad()
    def observe(self, code: torch.Tensor) -> None:
        """Count, per unit, the training samples since it last fired in ``code``."""
        fired = (code != 0).any(dim=0)
        self.samples_since_fired.add_(code.shape[0]).masked_fill_(fired, 0)
        self.steps += 1
        self._mirror()[0] += 1
        if self.coef and self._mirror()[0] % CHECK_EVERY == 0:
            self.check_dead_units()

    @torch.no_grad()
    def check_dead_units(self) -> bool:
        any_dead = bool((self.samples_since_fired >= self.dead_after).any())  # the one device sync
        self.any_dead.fill_(any_dead)
        self._mirror()[1] = any_dead
        return any_dead

    def forward(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        if not self.training or self.coef == 0 or not self._mirror()[1]:
            return None
        dead = self.samples_since_fired >= self.dead_after
        values, indices = (output.raw_code * dead).topk(self.aux_k, dim=1)
        aux_code = torch.zeros_like(output.raw_code).scatter(1, indices, values)
        # What the dead units write: the decoder's response to the auxiliary code around the zero code
        # (exactly W @ aux_code for a linear decoder), added to the reconstruction it should complete.
        added = model.decode_logits(aux_code) - model.decode_logits(torch.zeros_like(aux_code[:1]))
        completed = model.output_activation(output.logits.detach() + added)
        residual_power = (output.reconstruction.detach() - target).pow(2).mean().clamp_min(1e-12)
        normalised = (completed - target).pow(2).mean() / residual_power  # 1 when the dead units add nothing
        return self.coef * dead.any() * normalised  # units may have fired since the check


class RevivesDeadUnits(Sparsity):
    """A hard option whose penalty is its AuxK loss (set ``self.auxk`` and call ``auxk.observe`` on the
    codes it keeps in training)."""

    auxk: AuxKLoss

    def penalty(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        return self.auxk(output, target, model)
