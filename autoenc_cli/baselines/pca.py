"""PCA with the same number of components as the code: the linear baseline an autoencoder must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

CHUNK_VALUES = 1 << 22  # values per chunk of rows when fitting: 32 MiB in float64


class PCA:
    """Principal components of flattened images, fitted by SVD of the centred training data."""

    def __init__(self, num_components: int) -> None:
        self.num_components = num_components

    def fit(self, images: torch.Tensor) -> "PCA":
        """The principal axes are the eigenvectors of the centred data's scatter matrix, accumulated in
        float64 a chunk of rows at a time: memory grows with D x D, not with the number of samples (a
        float64 copy of 2 million activation rows would take 9 GB)."""
        flat = images.flatten(1)
        count, width = flat.shape
        chunks = flat.split(max(1, CHUNK_VALUES // width))
        self.mean = sum(chunk.double().sum(dim=0) for chunk in chunks) / count
        scatter = torch.zeros(width, width, dtype=torch.float64, device=flat.device)
        for chunk in chunks:
            centred = chunk.double() - self.mean
            scatter.addmm_(centred.T, centred)
        variances, vectors = torch.linalg.eigh(scatter)
        order = variances.argsort(descending=True)[: min(count, width)]  # as many axes as the data has
        self.axes = vectors[:, order].T  # every principal axis, by decreasing variance: fewer components for free
        self.components = self.axes[: self.num_components]  # (k, D)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1).double() - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return (codes @ self.components + self.mean).float().view(codes.shape[0], *shape)

    def reconstruction_mse(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> float:
        """MSE per pixel of the projection of ``images`` against ``targets`` (default: the images)."""
        targets = images if targets is None else targets
        reconstruction = self.decode(self.encode(images), tuple(images.shape[1:]))
        return (reconstruction - targets).pow(2).mean().item()

    def mse_by_components(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> list[float]:
        """``reconstruction_mse`` with k = 1, 2, ... components (as many as were kept), all at once.

        The axes are orthonormal, so with input coordinates c and target coordinates p on them the error
        with k components is ||target - mean||^2 + sum over the first k axes of (c^2 - 2 c p).
        """
        targets = images if targets is None else targets
        centred_targets = targets.flatten(1).double() - self.mean
        input_coordinates = (images.flatten(1).double() - self.mean) @ self.components.T
        target_coordinates = centred_targets @ self.components.T
        change_per_axis = (input_coordinates * (input_coordinates - 2 * target_coordinates)).sum(dim=0)
        errors = centred_targets.pow(2).sum() + change_per_axis.cumsum(dim=0)
        return (errors.clamp_min(0) / targets.numel()).tolist()


def pca_baseline_mse(
    train: torch.Tensor, val_inputs: torch.Tensor, num_components: int, val_targets: torch.Tensor | None = None
) -> float | None:
    """Validation MSE per pixel of PCA fitted on the clean ``train`` images, projecting ``val_inputs``
    (corrupted ones for a denoising run, so it sees what the autoencoder sees) and scored against
    ``val_targets``; None when the code is not smaller than the input."""
    if num_components >= train[0].numel() or num_components >= train.shape[0]:
        return None
    return PCA(num_components).fit(train).reconstruction_mse(val_inputs, val_targets)


@dataclass
class PCABaseline:
    mse: float | None  # pca_baseline_mse's number: None when the code is not smaller than the input
    mse_by_k: list[float]  # the validation MSE with k = i + 1 components at index i, up to num_components


def pca_baseline(
    train: torch.Tensor, val_inputs: torch.Tensor, num_components: int, val_targets: torch.Tensor | None = None
) -> PCABaseline:
    """``pca_baseline_mse`` and the whole curve over k = 1..num_components (fewer when the data has fewer
    principal axes) from a single SVD of ``train``."""
    pca = PCA(num_components).fit(train)
    mse = None
    if num_components < min(train[0].numel(), train.shape[0]):
        mse = pca.reconstruction_mse(val_inputs, val_targets)
    return PCABaseline(mse, pca.mse_by_components(val_inputs, val_targets))


def run_pca_baseline(parts: Any, code_dim: int, shared: Optional[dict] = None) -> Optional[PCABaseline]:
    """PCA with code_dim components on the validation inputs the run's autoencoder saw (corrupted when
    denoising), and with every fewer number of components (the sweep's frontier plot draws that curve);
    computed once per data, code size and validation inputs when ``shared`` keeps them (a stacked sweep)."""
    if shared is None:
        return _run_pca_baseline(parts, code_dim)
    key = (id(parts.data.train.images), id(parts.data.val.images), code_dim)
    if parts.noise.active:  # the corrupted validation inputs depend on the noise and the run's seed
        key += (repr(parts.config.noise), parts.config.seed, parts.config.trainer.eval_batch_size)
    if key not in shared:
        shared[key] = _run_pca_baseline(parts, code_dim)
    return shared[key]


def _run_pca_baseline(parts: Any, code_dim: int) -> Optional[PCABaseline]:
    from autoenc_cli.data.tensors import whole_split
    from autoenc_cli.training.metrics import corrupted_inputs

    whole_split(parts.data.train, "the PCA baseline")  # a memory-mapped split (data=vectors): skipped, with a note
    val, noise = parts.data.val, parts.noise
    inputs = val.images
    if noise.active:
        inputs = corrupted_inputs(val, parts.config.trainer.eval_batch_size, noise, parts.validation_noise_generator())
    return pca_baseline(parts.data.train.images, inputs, code_dim, val.images)
