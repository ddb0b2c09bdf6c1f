"""In-memory splits and the index-slicing batcher that replaces a per-sample DataLoader."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional

import numpy as np
import torch

from autoenc_cli.errors import DataError


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: Optional[torch.Tensor] = None  # (N,) int64, when the source has labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "Split":
        labels = self.labels.to(device) if self.labels is not None else None
        return Split(self.images.to(device), labels)

    def take(self, count: int) -> "Split":
        labels = self.labels[:count] if self.labels is not None else None
        return Split(self.images[:count], labels)


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Optional[Split] = None
    num_classes: Optional[int] = None  # labels are 0..num_classes-1 (loaders map a user's own labels to these)
    class_names: Optional[tuple[str, ...]] = None  # the user's label (or subfolder) for each class id

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    def to(self, device: torch.device) -> "DataBundle":
        test = self.test.to(device) if self.test is not None else None
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=test)


def as_images(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1].

    uint8 is scaled by 255 and uint16 by 65535 (the full range of the type, never the data's own
    maximum); float and bool are taken as they are. Other integer types have no known scale: refused.
    """
    if isinstance(array, np.ndarray) and array.dtype == np.uint16:
        array = array.astype(np.float32) / np.float32(65535)
    tensor = torch.as_tensor(array)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not (tensor.dtype.is_floating_point or tensor.dtype == torch.bool):
        raise DataError(
            f"images of type {str(tensor.dtype).removeprefix('torch.')} have no known intensity scale; "
            "give uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
        )
    return tensor.float()


def split_by_fraction(
    images: torch.Tensor, labels: Optional[torch.Tensor], val_fraction: float, seed: int
) -> tuple[Split, Split]:
    """Seeded shuffle, then the first ``round(val_fraction * N)`` samples validate and the rest train."""
    count = images.shape[0]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    val_count = min(max(1, round(val_fraction * count)), count - 1)
    val_index, train_index = order[:val_count], order[val_count:]
    pick = lambda index: Split(images[index], labels[index] if labels is not None else None)  # noqa: E731
    return pick(train_index), pick(val_index)


def iterate_batches(
    split: Split, batch_size: int, generator: Optional[torch.Generator] = None, skip_batches: int = 0
) -> Iterator[torch.Tensor]:
    """Yield image batches by slicing a (seeded) permutation; no per-sample Python work.

    The permutation is drawn on the CPU generator (so CPU and CUDA runs see the same order) and
    moved to the data's device once per epoch. ``skip_batches`` resumes an epoch part-way through.
    """
    count = len(split)
    if generator is None:
        for start in range(0, count, batch_size):
            yield split.images[start : start + batch_size]
        return
    order = torch.randperm(count, generator=generator).to(split.images.device)
    for start in range(skip_batches * batch_size, count, batch_size):
        yield split.images[order[start : start + batch_size]]
