"""Splits held in memory (or read per batch from a memory map) and the index-slicing batcher that
replaces a per-sample DataLoader."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional

import numpy as np
import torch

from autoenc_cli.errors import DataError


class MappedRows:
    """The rows of an (N, D) array that one split owns, read on demand: a split of a memory-mapped file
    larger than memory (``data=vectors``). It stands in for a split's ``images`` tensor where the training
    code only indexes it: ``len``, ``shape``, ``device``, ``[slice | int | index tensor]`` and ``to``.
    Code that needs the whole split as one tensor (PCA) asks ``in_memory`` first.

    A read gathers its rows from the array in ascending row order (one fancy-index: the page cache and
    read-ahead see a forward scan), puts them back in the order asked for, moves them to ``device`` in the
    array's own float type, and converts them to float32 and normalises them there: ``(x - shift) / divisor``.
    """

    dtype = torch.float32

    def __init__(
        self,
        array: np.ndarray,
        index: np.ndarray,
        device: torch.device | str = "cpu",
        shift: Optional[torch.Tensor] = None,
        divisor: Optional[torch.Tensor] = None,
    ) -> None:
        self.array = array  # (N, D): an np.memmap, or any array
        self.index = index  # (n,) int64: the array rows of this split, in split order
        self.device = torch.device(device)
        self.shift = shift.to(self.device) if shift is not None else None  # (D,) or a scalar, float32
        self.divisor = divisor.to(self.device) if divisor is not None else None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.array.shape[1]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: slice | int | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        rows = self.index[key]
        return self.read(rows) if np.ndim(rows) else self.read(rows[None])[0]

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """Rows of the array on the CPU in the order given, still in the array's own float type (float16 rows
        are put back in order, and moved to a GPU, at half the bytes; torch widens them faster than numpy)."""
        ascending = np.argsort(rows)  # not stable: a row asked for twice reads the same values either way
        values = np.asarray(self.array[rows[ascending]])  # a fresh array: fancy indexing copies
        if not values.dtype.isnative:  # e.g. big-endian floats from another machine: torch reads native only
            values = values.astype(values.dtype.newbyteorder("="))
        if not np.all(ascending[1:] > ascending[:-1]):  # not already in file order (a sequential pass)
            ordered = np.empty_like(values)
            ordered[ascending] = values
            values = ordered
        return torch.from_numpy(values)

    def read_raw(self, rows: np.ndarray) -> torch.Tensor:
        """Float32 rows of the array on the CPU, in the order given, not normalised."""
        return self.gather(rows).float()

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """``(values - shift) / divisor`` in place (values is a fresh tensor of the caller's)."""
        if self.shift is not None:
            values.sub_(self.shift)
        if self.divisor is not None:
            values.div_(self.divisor)
        return values

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Rows of the array on the split's device, normalised."""
        return self.normalise(self.gather(rows).to(self.device).float())

    def to(self, device: torch.device) -> "MappedRows":
        return MappedRows(self.array, self.index, device, self.shift, self.divisor)


class NotInMemory(Exception):
    """An operation needs a whole split as one tensor, but the split is read per batch from a memory map."""


@dataclass
class Split:
    images: torch.Tensor | MappedRows  # (N, C, H, W) float32 in [0, 1]; (N, D) float32 for vectors
    labels: Optional[torch.Tensor] = None  # (N,) int64, when the source has labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "Split":
        labels = self.labels.to(device) if self.labels is not None else None
        return Split(self.images.to(device), labels)

    def take(self, count: int) -> "Split":
        """The first ``count`` samples, in memory (a memory-mapped split reads just those rows)."""
        labels = self.labels[:count] if self.labels is not None else None
        return Split(self.images[:count], labels)


def in_memory(split: Split) -> bool:
    """Whether the split is one tensor (False: its rows are read per batch from a memory map)."""
    return isinstance(split.images, torch.Tensor)


def whole_split(split: Split, what: str) -> torch.Tensor:
    """The split's images as one tensor, for ``what`` (e.g. PCA) that needs them all at once."""
    if not in_memory(split):
        rows, width = split.images.shape
        raise NotInMemory(
            f"{what} needs the whole {rows:,} x {width} split in memory; it is read per batch from a memory map"
        )
    return split.images


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Optional[Split] = None
    num_classes: Optional[int] = None  # labels are 0..num_classes-1 (loaders map a user's own labels to these)
    class_names: Optional[tuple[str, ...]] = None  # the user's label (or subfolder) for each class id
    # Set by loaders whose data is too large to hash whole (data=vectors): used as the data fingerprint.
    fingerprint: Optional[str] = None
    # data.binarize=dynamic: training batches are binary draws of the training intensities (``draw_batch``).
    binary_training_draws: bool = False

    def draw_batch(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch as the model trains on it: a fresh binary draw of its intensities, or as it is."""
        return torch.bernoulli(batch, generator=generator) if self.binary_training_draws else batch

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


def fraction_split(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (train, validation) of ``split_by_fraction``: a seeded shuffle whose first
    ``round(val_fraction * count)`` positions validate (at least one, never all)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    val_count = min(max(1, round(val_fraction * count)), count - 1)
    return order[val_count:], order[:val_count]


def split_by_fraction(
    images: torch.Tensor, labels: Optional[torch.Tensor], val_fraction: float, seed: int
) -> tuple[Split, Split]:
    """Seeded shuffle, then the first ``round(val_fraction * N)`` samples validate and the rest train."""
    train_index, val_index = fraction_split(images.shape[0], val_fraction, seed)
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
    order = epoch_order(split, generator)
    for start in range(skip_batches * batch_size, count, batch_size):
        yield split.images[order[start : start + batch_size]]


def epoch_order(split: Split, generator: torch.Generator) -> torch.Tensor:
    """One epoch's seeded permutation of the split's rows (drawn on the CPU generator, so CPU and CUDA
    runs see the same order), on the data's device."""
    order = torch.randperm(len(split), generator=generator)
    if in_memory(split):  # a memory-mapped split reads its rows on the CPU: its order stays there
        order = order.to(split.images.device)
    return order
