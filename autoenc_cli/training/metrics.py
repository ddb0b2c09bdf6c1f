"""Evaluation over a split: losses, reconstruction error and code statistics, in one pass."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.training.records import Evaluation

# Code activations that are bounded by 1 and never exactly zero, so "active" needs a threshold. A tenth of
# full scale: below it a unit writes under 10% of its decoder feature. KL sparsity pulls sigmoid units'
# mean activation to rho (0.05 by default), so a unit idling near rho counts as off and one near 1 as on.
BOUNDED_NONZERO_ACTIVATIONS = ("sigmoid", "tanh")
BOUNDED_NONZERO_THRESHOLD = 0.1


def active_threshold(configured: Optional[float], code_activation: str) -> float:
    """The |code| above which a unit counts as active: ``trainer.active_threshold``, or when that is null
    0 (exactly non-zero), except 0.1 for sigmoid and tanh codes. The rule depends on the activation only,
    so runs of a sweep that differ in their sparsity option are counted alike."""
    if configured is not None:
        return float(configured)
    return BOUNDED_NONZERO_THRESHOLD if code_activation in BOUNDED_NONZERO_ACTIVATIONS else 0.0


@dataclass
class CodeStatistics:
    """Per-unit firing frequency over a split; a unit fires on a sample when its |code| exceeds ``threshold``."""

    firing_frequency: torch.Tensor  # (code_dim,) fraction of samples on which each unit is active
    l0: float  # mean number of active units per sample
    threshold: float = 0.0  # the |code| a unit must exceed to count as active

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
    threshold: float = 0.0,
) -> tuple[Evaluation, CodeStatistics]:
    """Mean loss terms, reconstruction error, FVU, cosine similarity and code statistics over ``split``,
    with a unit active where |code| > ``threshold``; one host sync at the end.

    With ``noise`` the model sees corrupted inputs and is scored against the clean ones.
    """
    was_training = model.training
    model.eval()
    device = split.images.device
    # loss, reconstruction, penalty, squared error, |code| sum, squared error of the noisy input, cosine sum
    sums = torch.zeros(7, device=device, dtype=torch.float64)
    active_per_unit = torch.zeros((), device=device, dtype=torch.float64)  # becomes (code width,) below
    # Per-feature sums and sums of squares of the clean target about a reference point (the first batch's
    # mean), in float64: the variance about the split's mean then does not cancel away for data far from 0.
    reference: torch.Tensor | None = None
    target_sum = torch.zeros((), device=device, dtype=torch.float64)
    target_square_sum = torch.zeros((), device=device, dtype=torch.float64)
    for clean in iterate_batches(split, batch_size):
        inputs = noise(clean, generator) if noise is not None else clean
        output = model(inputs)
        terms = objective(output, clean)
        count = clean.shape[0]
        penalty = terms.penalty if terms.penalty is not None else torch.zeros((), device=device)
        reconstruction = output.reconstruction.float()
        sums += torch.stack(
            [
                terms.total * count,
                terms.reconstruction * count,
                penalty * count,
                (reconstruction - clean).pow(2).sum(),
                output.code.abs().sum(),
                (inputs - clean).pow(2).sum(),
                F.cosine_similarity(reconstruction.flatten(1), clean.flatten(1).float(), dim=1, eps=1e-8).sum(),
            ]
        ).double()
        target = clean.flatten(1).double()
        if reference is None:
            reference = target.mean(dim=0)
        centred = target - reference
        target_sum = target_sum + centred.sum(dim=0)
        target_square_sum = target_square_sum + centred.pow(2).sum(dim=0)
        active_per_unit = active_per_unit + (output.code.abs() > threshold).sum(dim=0).double()
    model.train(was_training)
    samples, pixels = len(split), len(split) * model.input_size
    # Sum over samples and features of (x - mean)^2, from the moments about the reference.
    total_variance = (target_square_sum - target_sum.pow(2) / samples).sum()
    totals = torch.cat([sums, total_variance.view(1)]).tolist()
    loss, reconstruction_loss, penalty, squared_error, code_abs, noisy_error, cosine_sum, variance = totals
    fvu = squared_error / variance if variance > 0 else None  # undefined for a constant split
    frequency = (active_per_unit / samples).float()
    stats = CodeStatistics(frequency, l0=active_per_unit.sum().item() / samples, threshold=threshold)
    evaluation = Evaluation(
        loss=loss / samples,
        reconstruction_loss=reconstruction_loss / samples,
        penalty=penalty / samples,
        mse=squared_error / pixels,
        squared_error_per_image=squared_error / samples,
        psnr=psnr(squared_error / pixels),
        fvu=fvu,
        explained_variance=1 - fvu if fvu is not None else None,
        cosine_similarity=cosine_sum / samples,
        l0=stats.l0,
        l0_threshold=threshold,
        dead_fraction=stats.dead_fraction,
        dense_fraction=stats.dense_fraction,
        mean_activation=code_abs / (samples * active_per_unit.numel()),
        psnr_noisy=psnr(noisy_error / pixels) if noise is not None else None,
        psnr_denoised=psnr(squared_error / pixels) if noise is not None else None,
    )
    return evaluation, stats
