"""PCA with the same number of components as the code: the linear baseline an autoencoder must beat."""

from __future__ import annotations

import torch


class PCA:
    """Principal components of flattened images, fitted by SVD of the centred training data."""

    def __init__(self, num_components: int) -> None:
        self.num_components = num_components

    def fit(self, images: torch.Tensor) -> "PCA":
        flat = images.flatten(1).double()
        self.mean = flat.mean(dim=0)
        # Right singular vectors of the centred data are the principal axes.
        _, _, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = vh[: self.num_components]  # (k, D)
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


def pca_baseline_mse(
    train: torch.Tensor, val_inputs: torch.Tensor, num_components: int, val_targets: torch.Tensor | None = None
) -> float | None:
    """Validation MSE per pixel of PCA fitted on the clean ``train`` images, projecting ``val_inputs``
    (corrupted ones for a denoising run, so it sees what the autoencoder sees) and scored against
    ``val_targets``; None when the code is not smaller than the input."""
    if num_components >= train[0].numel() or num_components >= train.shape[0]:
        return None
    return PCA(num_components).fit(train).reconstruction_mse(val_inputs, val_targets)
