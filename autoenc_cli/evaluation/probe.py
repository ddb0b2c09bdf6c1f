"""Semi-supervised probes: a small classifier on frozen features with few labels per class."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autoenc_cli.models.autoencoder import Autoencoder


def labelled_subset(labels: torch.Tensor, per_class: Optional[int], seed: int) -> torch.Tensor:
    """Indices of ``per_class`` seeded samples of each class (all samples when None), batched."""
    if per_class is None:
        return torch.arange(labels.numel(), device=labels.device)
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed)).to(labels.device)
    shuffled = labels[order]
    # Rank of each sample within its class in the shuffled order, computed with a stable sort.
    by_class = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[by_class]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(sorted_labels.numel(), device=labels.device) - starts
    return order[by_class[rank < per_class]]


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def fit_classifier(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, kind: str, steps: int, l2: float
) -> nn.Module:
    """Multinomial logistic regression (full-batch L-BFGS) or a one-hidden-layer MLP (Adam)."""
    torch.manual_seed(0)
    if kind == "logistic":
        head = nn.Linear(features.shape[1], num_classes).to(features.device)
        optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(head(features), labels) + l2 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return head
    head = nn.Sequential(nn.Linear(features.shape[1], 256), nn.ReLU(), nn.Linear(256, num_classes)).to(features.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=l2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(features), labels).backward()
        optimizer.step()
    return head


@torch.no_grad()
def accuracy(classifier: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (classifier(inputs).argmax(dim=1) == labels).float().mean().item()


def probe_features(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    kind: str,
    steps: int,
    l2: float,
) -> float:
    """Accuracy on the test features of a classifier fitted to standardised training features."""
    train_features, test_features = standardise(train_features.float(), test_features.float())
    head = fit_classifier(train_features, train_labels, num_classes, kind, steps, l2)
    return accuracy(head, test_features, test_labels)


def finetune_encoder(
    model: Autoencoder,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    steps: int,
    batch_size: int = 128,
) -> float:
    """Train a copy of the encoder together with a linear head on the labelled images."""
    tuned = copy.deepcopy(model).train().requires_grad_(True)
    head = nn.Linear(model.code_dim, num_classes).to(images.device)
    optimizer = torch.optim.Adam([*tuned.parameters(), *head.parameters()], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=generator)
        batch = batch.to(images.device)
        optimizer.zero_grad()
        F.cross_entropy(head(tuned.encode(images[batch])), labels[batch]).backward()
        optimizer.step()
    tuned.eval()
    return accuracy(lambda x: head(tuned.encode(x)), test_images, test_labels)
