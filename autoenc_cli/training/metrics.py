"""Evaluation over a split: losses, reconstruction error and code statistics, in one pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.training.records import Evaluation


@dataclass
class CodeStatistics:
    """Per-unit firing frequency over a split; a unit fires on a sample when its code is non-zero."""

    firing_frequency: torch.Tensor  # (code_dim,) fraction of samples on which each unit is active
    l0: float  # mean number of active units per sample

    @property
    def dead_fraction(self) -> float:
        return (self.firing_frequency == 0).float().mean().item()

    @property
    def dense_fraction(self) -> float:
        return (self.firing_frequency > 0.5).float().mean().item()


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, peak]."""
    return float("inf") if mse == 0 else 10.0 * math.log10(peak**2 / mse)


@torch.inference_mode()
def corrupted_inputs(split: Split, batch_size: int, noise: Noise, generator: torch.Generator) -> torch.Tensor:
    """The split as ``evaluate`` corrupts it: batch by batch, in order, from the same generator."""
    return torch.cat([noise(clean, generator) for clean in iterate_batches(split, batch_size)])


@torch.inference_mode()
def evaluate(
    model: Autoencoder,
    objective: Objective,
    split: Split,
    batch_size: int,
    noise: Noise | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Evaluation, CodeStatistics]:
    """Mean loss terms, MSE per pixel and code statistics over ``split``; one host sync at the end.

    With ``noise`` the model sees corrupted inputs and is scored against the clean ones.
    """
    was_training = model.training
    model.eval()
    device = split.images.device
    # loss, reconstruction, penalty, squared error, |code| sum, squared error of the noisy input
    sums = torch.zeros(6, device=device, dtype=torch.float64)
    active_per_unit = torch.zeros((), device=device, dtype=torch.float64)  # becomes (code width,) below
    for clean in iterate_batches(split, batch_size):
        inputs = noise(clean, generator) if noise is not None else clean
        output = model(inputs)
        terms = objective(output, clean)
        count = clean.shape[0]
        penalty = terms.penalty if terms.penalty is not None else torch.zeros((), device=device)
        sums += torch.stack(
            [
                terms.total * count,
                terms.reconstruction * count,
                penalty * count,
                (output.reconstruction.float() - clean).pow(2).sum(),
                output.code.abs().sum(),
                (inputs - clean).pow(2).sum(),
            ]
        ).double()
        active_per_unit = active_per_unit + (output.code != 0).sum(dim=0).double()
    model.train(was_training)
    samples, pixels = len(split), len(split) * model.input_size
    loss, reconstruction, penalty, squared_error, code_abs, noisy_error = sums.tolist()
    frequency = (active_per_unit / samples).float()
    stats = CodeStatistics(frequency, l0=active_per_unit.sum().item() / samples)
    evaluation = Evaluation(
        loss=loss / samples,
        reconstruction_loss=reconstruction / samples,
        penalty=penalty / samples,
        mse=squared_error / pixels,
        squared_error_per_image=squared_error / samples,
        l0=stats.l0,
        dead_fraction=stats.dead_fraction,
        dense_fraction=stats.dense_fraction,
        mean_activation=code_abs / (samples * active_per_unit.numel()),
        psnr_noisy=psnr(noisy_error / pixels) if noise is not None else None,
        psnr_denoised=psnr(squared_error / pixels) if noise is not None else None,
    )
    return evaluation, stats
