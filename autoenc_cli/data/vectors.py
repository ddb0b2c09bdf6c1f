"""Vectors: an N x D float array on disk (a network's activations, for a sparse autoencoder).

The array is a ``.npy`` file or one array of a ``.npz``; it is memory-mapped, never read whole, unless
it fits comfortably in memory (then it is loaded onto the training device like every other data set).
A memory-mapped split reads each batch's rows from the file (``tensors.MappedRows``), so a file larger
than memory trains. Normalisation statistics come from the training split (a seeded sample of at most
``stats_rows`` rows), and are derived again, identically, wherever the run's data is loaded; a run's
statistics (``Normalisation``) are what ``autoenc export`` stores in config.json, so an exported model
normalises new raw vectors as its run did without the run's data.

All of this is ``RowsConfig``'s, shared by every data option of N x D rows: an option only says where its
rows and their header come from (``rows_header``, ``open_rows``); ``data=activations`` reads an activation
cache's shards this way (``autoenc_cli.data.activations``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, Protocol

import numpy as np
import torch
from omegaconf import MISSING

from autoenc_cli.data.activation_cache import is_cache
from autoenc_cli.data.base import DataConfig
from autoenc_cli.data.files import _bytes, available_memory
from autoenc_cli.data.tensors import DataBundle, MappedRows, Split, fraction_split
from autoenc_cli.errors import ConfigError, DataError, UserError
from autoenc_cli.registry import register
from autoenc_cli.schema import choice, number

if TYPE_CHECKING:
    from autoenc_cli.schema.check import Facts

NORMALIZATIONS = ("none", "standardize", "unit_mean_square")
LOADS = ("auto", "memory", "memmap")
# load=auto loads the splits whole when their float32 copy takes at most this share of the available
# memory: the rest is for the model, the optimizer, the figures and the other programs on the machine.
MEMORY_SHARE = 0.5
CHUNK_BYTES = 16 * 2**20  # rows are read this many bytes at a time for statistics and whole loads
FINGERPRINT_ROWS = 1024  # rows spread evenly over the file whose bytes go into the data fingerprint


class RowsHeader(Protocol):
    """What a data option says about its N x D rows before any value is read (``VectorsHeader``: a file's
    array; the activation cache's header: its manifest)."""

    shape: tuple[int, int]
    dtype: np.dtype

    @property
    def source(self) -> str:  # how messages name the rows: data.path='acts.npz' (array 'acts')
        ...

    @property
    def mappable(self) -> bool:  # False: the rows are decompressed whole before any is read
        ...

    @property
    def described(self) -> dict[str, Any]:  # what the data fingerprint hashes besides the sampled rows
        ...


@dataclass
class RowsConfig(DataConfig):
    """What the data options of N x D float rows share (data=vectors: a file's array; data=activations: an
    activation cache's shards): normalisation, memory-mapping, the split, the fingerprint and the checks.
    Where the rows and their header come from (``rows_header``, ``open_rows``) is all an option defines."""

    # none | standardize (per feature: mean 0, std 1) | unit_mean_square (one scale: mean squared norm D);
    # the statistics come from the training split
    normalize: str = choice("none", NORMALIZATIONS)
    stats_rows: int = number(100_000, ge=2)  # statistics from at most this many training rows (seeded sample)
    # auto: whole into memory when it fits in half the free memory, else read per batch from a memory map
    load: str = choice("auto", LOADS)

    def rows_header(self) -> RowsHeader:
        """The rows' header, refusing what cannot train; no values are read."""
        raise NotImplementedError

    def open_rows(self, header: RowsHeader) -> Any:
        """The rows ``header`` describes as a read-only (N, D) array (a memory map where it can be one)."""
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        """(D,) from the rows' header, after every refusal the header allows; no values are read."""
        header = self.rows_header()
        loads_whole(self, header)
        return (header.shape[1],)

    def check_with(self, facts: "Facts") -> None:
        model, shape = facts.config.model, facts.input_shape
        if facts.model.layer_widths is None:  # only fully-connected models describe their layer widths
            raise ConfigError(
                "model",
                model.name,
                f"data={self.name} gives vectors of shape {shape}; use model=fc or model=sparse_fc",
                absolute=True,
            )
        if facts.config.loss.name == "bce":
            raise ConfigError(
                "loss",
                "bce",
                "binary cross-entropy needs targets in [0, 1], which vectors are not; use loss=mse",
                absolute=True,
            )
        if facts.model.output_activation == "sigmoid" and self.normalize != "none":
            raise ConfigError(
                "model.output_activation",
                "sigmoid",
                f"data.normalize={self.normalize} gives values outside [0, 1], which a sigmoid cannot reach; "
                "use model.output_activation=linear",
                absolute=True,
            )


@dataclass
class VectorsConfig(RowsConfig):
    name: str = "vectors"
    path: str = MISSING  # a .npy holding an N x D float array, or a .npz holding one
    member: Optional[str] = None  # the array's name in a .npz; null: the archive's only array

    def check(self) -> None:
        if self.member == "":
            raise ConfigError("member", "", "the name of an array in the .npz, or null for its only array")

    def rows_header(self) -> "VectorsHeader":
        return read_header(Path(self.path), self.member)

    def open_rows(self, header: "VectorsHeader") -> np.ndarray:
        return open_array(header)


@dataclass(frozen=True)
class VectorsHeader:
    """What the file says about the array, before any of its values is read."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool
    member: Optional[str]  # the array's name in a .npz; None for a .npy
    offset: Optional[int]  # where the values start in the file; None for a compressed .npz member

    @property
    def source(self) -> str:
        return f"data.path='{self.path}'" + (f" (array '{self.member}')" if self.member else "")

    @property
    def mappable(self) -> bool:
        return self.offset is not None

    @property
    def described(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype.str, "fortran_order": self.fortran_order}


def _npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    # Version 3.0 differs from 2.0 only in allowing UTF-8 field names (structured arrays, refused anyway).
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(handle)
    return tuple(shape), fortran_order, dtype


def _member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) member's bytes start: after its local header, whose name and extra
    fields (zip64 sizes) may differ in length from the central directory's."""
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header for '{info.filename}'")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        return info.header_offset + 30 + name_length + extra_length


def _read_npz_header(path: Path, member: Optional[str]) -> VectorsHeader:
    with zipfile.ZipFile(path) as archive:
        arrays = [name.removesuffix(".npy") for name in archive.namelist() if name.endswith(".npy")]
        if member is None:
            if len(arrays) != 1:
                listed = ", ".join(arrays) or "nothing"
                raise DataError(
                    f"data.path='{path}' holds {len(arrays)} arrays ({listed}); name one with data.member=NAME"
                )
            member = arrays[0]
        elif member not in arrays:
            raise DataError(f"data.path='{path}' has no array '{member}' (it has: {', '.join(arrays) or 'nothing'})")
        info = archive.getinfo(f"{member}.npy")
        with archive.open(info) as handle:
            shape, fortran_order, dtype = _npy_header(handle)
            header_length = handle.tell()
    offset = None
    if info.compress_type == zipfile.ZIP_STORED:
        offset = _member_offset(path, info) + header_length
    return VectorsHeader(path, shape, dtype, fortran_order, member, offset)


def read_header(path: Path, member: Optional[str] = None) -> VectorsHeader:
    """The array's header, refusing what cannot train: not a file, not .npy/.npz, not N x D floats."""
    if path.is_dir() and is_cache(path):
        raise DataError(
            f"data.path='{path}' is an activation cache (autoenc harvest wrote it), not a .npy or .npz; "
            f"train on it with data=activations data.path={path}"
        )
    if not path.is_file():
        raise DataError(f"data.path='{path}' is not a file; give a .npy or .npz holding an N x D float array")
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
            if magic == b"\x93NUMPY":
                handle.seek(0)
                shape, fortran_order, dtype = _npy_header(handle)
                header = VectorsHeader(path, shape, dtype, fortran_order, None, handle.tell())
            elif magic[:4] == b"PK\x03\x04":
                header = _read_npz_header(path, member)
            else:
                raise DataError(f"data.path='{path}' is neither a .npy nor a .npz file (np.save / np.savez write them)")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"data.path='{path}' is not a readable .npy or .npz file ({reason})") from None
    if member is not None and header.member is None:
        raise ConfigError("data.member", member, f"'{path}' is a .npy file (one array); leave it null", absolute=True)
    check_rows(header)
    return header


def check_rows(header: RowsHeader) -> None:
    """Refuse rows that cannot train: Python objects, not N x D, not floats, fewer than 2."""
    source, shape, dtype = header.source, header.shape, header.dtype
    if dtype.hasobject:
        raise DataError(f"{source} holds Python objects, which autoenc does not unpickle; save the vectors as floats")
    if len(shape) != 2:
        hint = f" (reshape with .reshape(-1, {shape[-1]}))" if len(shape) > 2 else ""
        raise DataError(f"{source}: vectors must be an N x D array; got shape {shape}{hint}")
    if dtype.kind != "f":
        raise DataError(
            f"{source}: vectors must be float16, float32 or float64; got {dtype} (convert with .astype(np.float32))"
        )
    if shape[0] < 2 or shape[1] < 1:
        raise DataError(f"{source}: need at least 2 vectors of at least 1 value; got shape {shape}")


def loads_whole(config: RowsConfig, header: RowsHeader) -> bool:
    """Whether the splits are loaded whole (into memory, then onto the training device) rather than read
    per batch from a memory map; refuses what neither way can do."""
    rows = min(config.limit or header.shape[0], header.shape[0])
    needed = rows * header.shape[1] * 4  # the float32 splits
    if not header.mappable:  # a compressed member is decompressed whole first
        needed += header.shape[0] * header.shape[1] * header.dtype.itemsize
    available = available_memory()
    what = f"{header.source}: {rows:,} vectors of {header.shape[1]} values"
    if not header.mappable and (config.load == "memmap" or (available is not None and needed > available)):
        reason = "data.load=memmap" if config.load == "memmap" else f"{_bytes(needed)} does not fit in memory"
        raise DataError(
            f"{header.source} is compressed (np.savez_compressed), which cannot be memory-mapped ({reason}); "
            "save it with np.save or np.savez"
        )
    if config.load == "memmap":
        return False
    if config.load == "memory":
        if available is not None and needed > available:
            raise DataError(
                f"{what}: loading needs about {_bytes(needed)} of memory, but {_bytes(available)} is available; "
                "use data.load=auto (memory-mapped) or data.limit=N"
            )
        return True
    return not header.mappable or available is None or needed <= MEMORY_SHARE * available


def open_array(header: VectorsHeader) -> np.ndarray:
    """The array as a read-only memory map (a compressed .npz member: decompressed into memory)."""
    try:
        if header.offset is None:
            with np.load(header.path) as archive:
                return archive[header.member]
        if header.member is None:
            return np.load(header.path, mmap_mode="r")
        order = "F" if header.fortran_order else "C"
        return np.memmap(header.path, header.dtype, "r", header.offset, header.shape, order)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{header.source} cannot be read ({str(error).splitlines()[0]})") from None


def split_rows(count: int, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The array rows of the training and validation splits, in split order: exactly the samples (and
    order) that ``make_bundle`` gives an in-memory data set of ``count`` samples with the same config."""
    if config.limit is not None:
        keep = torch.randperm(count, generator=torch.Generator().manual_seed(config.split_seed))[: config.limit]
    else:
        keep = torch.arange(count)
    train, val = fraction_split(len(keep), config.val_fraction, config.split_seed)
    return keep[train].numpy(), keep[val].numpy()


def _chunk_rows(width: int) -> int:
    return max(1, CHUNK_BYTES // (4 * width))


def _refuse_non_finite(values: torch.Tensor, rows: np.ndarray, source: str) -> None:
    """Name the first file row (of those read) holding NaN or infinity."""
    finite = torch.isfinite(values).all(dim=1)
    if not bool(finite.all()):
        bad = np.sort(rows[(~finite).numpy()])
        raise DataError(
            f"{source}: NaN or infinite values in {len(bad):,} of {len(rows):,} vectors read (first: row {bad[0]}); "
            "vectors must be finite"
        )


def training_statistics(
    rows: MappedRows, config: RowsConfig, source: str
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(shift, divisor) of ``config.normalize`` from the training split's rows: all of them, or a seeded
    sample of ``stats_rows`` when there are more. Moments are accumulated in float64 chunk by chunk
    (Chan et al.'s pairwise update), so a sample larger than memory is fine and the result is the same
    on every load."""
    if config.normalize == "none":
        return None, None
    train = rows.index
    if len(train) > config.stats_rows:
        picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.split_seed))
        train = train[picked[: config.stats_rows].numpy()]
    sample = np.sort(train)  # file order: a forward scan
    width = rows.shape[1]
    count, mean, squares = 0, torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
    step = _chunk_rows(width)
    for start in range(0, len(sample), step):
        chunk_rows = sample[start : start + step]
        values = rows.read_raw(chunk_rows)
        _refuse_non_finite(values, chunk_rows, source)
        values = values.double()
        chunk_mean = values.mean(dim=0)
        chunk_squares = (values - chunk_mean).pow(2).sum(dim=0)
        total = count + len(chunk_rows)
        delta = chunk_mean - mean
        mean += delta * (len(chunk_rows) / total)
        squares += chunk_squares + delta.pow(2) * (count * len(chunk_rows) / total)
        count = total
    if config.normalize == "standardize":
        std = (squares / count).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature is centred, not scaled
        return mean.float(), std.float()
    # unit_mean_square: mean ||x||^2 = sum over features of (variance + mean^2); scaled to D.
    mean_square = float((squares / count + mean.pow(2)).sum()) / width
    return None, torch.tensor(mean_square**0.5 if mean_square > 0 else 1.0, dtype=torch.float32)


def load_whole(rows: MappedRows, source: str) -> torch.Tensor:
    """Every row of a split, normalised, as one float32 tensor on the CPU (read a chunk at a time)."""
    whole = torch.empty(tuple(rows.shape), dtype=torch.float32)
    step = _chunk_rows(rows.shape[1])
    for start in range(0, len(rows), step):
        chunk_rows = rows.index[start : start + step]
        values = rows.read_raw(chunk_rows)
        _refuse_non_finite(values, chunk_rows, source)
        whole[start : start + step] = rows.normalise(values)
    return whole


def vectors_fingerprint(
    header: RowsHeader, array: Any, splits: tuple[np.ndarray, np.ndarray], statistics: tuple
) -> str:
    """A hash of the array's header, the bytes of ``FINGERPRINT_ROWS`` rows spread evenly over it, the
    rows of each split (in split order) and the normalisation statistics: cheap for a file of any size.

    Copying or moving the file keeps it (no path, no modification time); an edit of rows outside the
    sample is noticed only through the statistics (normalize=standardize or unit_mean_square)."""
    count = header.shape[0]
    sampled = np.unique(np.linspace(0, count - 1, min(count, FINGERPRINT_ROWS)).round().astype(np.int64))
    values = np.ascontiguousarray(array[sampled])
    _refuse_non_finite(torch.from_numpy(values.astype(np.float32)), sampled, header.source)
    digest = hashlib.sha256(json.dumps(header.described, sort_keys=True).encode())
    digest.update(values.tobytes())
    for part in (*splits, *(value.numpy() for value in statistics if value is not None)):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Normalisation:
    """A run's ``data.normalize``: ``(x - shift) / divisor`` with its training split's statistics (shift:
    (D,) or none; divisor: (D,) for standardize, one number for unit_mean_square). An export's config.json
    holds it as ``{"method", "shift", "divisor"}`` (lists of floats, or a float), exactly."""

    method: str
    shift: Optional[torch.Tensor]
    divisor: torch.Tensor

    KEYS = ("shift", "divisor")

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Raw vectors -> the model's input space, with the arithmetic ``MappedRows.normalise`` trains with."""
        if self.shift is not None:
            values = values - self.shift.to(values.device)
        return values / self.divisor.to(values.device)

    def invert(self, values: torch.Tensor) -> torch.Tensor:
        """The model's space (a reconstruction) -> raw vectors."""
        values = values * self.divisor.to(values.device)
        return values + self.shift.to(values.device) if self.shift is not None else values

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "shift": self.shift.tolist() if self.shift is not None else None,  # float32 -> float: exact
            "divisor": self.divisor.tolist(),
        }

    @classmethod
    def from_json(cls, value: Any, method: str, width: int, where: str) -> "Normalisation":
        """Read back ``as_json``'s form from a file autoenc did not necessarily write: the method the run's
        config names, finite numbers of the right count, a positive divisor; anything else is one line."""
        shapes = {"standardize": ((width,), (width,)), "unit_mean_square": (None, ())}[method]
        if not isinstance(value, dict) or value.get("method") != method:
            raise UserError(
                f"{where} must be {{method: {method}, shift, divisor}}: the run's data.normalize statistics"
            )
        shift, divisor = (_statistic(value.get(key), shape, f"{where}.{key}") for key, shape in zip(cls.KEYS, shapes))
        if not bool((divisor > 0).all()):
            raise UserError(f"{where}.divisor must be > 0 (a standard deviation or a root mean square)")
        return cls(method, shift, divisor)


def _statistic(value: Any, shape: Optional[tuple[int, ...]], where: str) -> Optional[torch.Tensor]:
    """One statistic of a Normalisation read from JSON: null where ``shape`` is None, else finite numbers."""
    if shape is None:
        if value is not None:
            raise UserError(f"{where} must be null for this normalisation")
        return None
    count = shape[0] if shape else 1
    numbers = value if shape else [value]
    if not (isinstance(numbers, list) and len(numbers) == count and all(map(_finite_number, numbers))):
        raise UserError(f"{where} must be {f'a list of {count} numbers' if shape else 'a number'}, all finite")
    return torch.tensor(value, dtype=torch.float32)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def normalisation_of(config: RowsConfig, statistics: tuple) -> Optional[Normalisation]:
    shift, divisor = statistics
    return None if divisor is None else Normalisation(config.normalize, shift, divisor)


def run_normalisation(config: RowsConfig) -> tuple[Optional[Normalisation], str]:
    """The statistics a run with this data config normalised with, and the data's fingerprint (to tell
    that the file is still the one the run trained on), read without loading the splits."""
    header, _, array, splits = _open(config)
    statistics = training_statistics(MappedRows(array, splits[0]), config, header.source)
    return normalisation_of(config, statistics), vectors_fingerprint(header, array, splits, statistics)


def _open(config: RowsConfig) -> tuple[RowsHeader, bool, Any, tuple[np.ndarray, np.ndarray]]:
    """The array's header, whether its splits load whole (refusing what neither way can load), the array
    and the rows of the training and validation splits."""
    header = config.rows_header()
    whole = loads_whole(config, header)
    return header, whole, config.open_rows(header), split_rows(header.shape[0], config)


@register(VectorsConfig)
def load_vectors(config: RowsConfig, normalisation: Optional[Normalisation] = None) -> DataBundle:
    """Training and validation splits of the rows (seeded, as every data set; data=vectors and
    data=activations alike), normalised with
    the training split's statistics (or ``normalisation``'s: a trained run's, for other vectors); whole
    tensors when they fit in memory, else memory-mapped."""
    header, whole, array, (train_rows, val_rows) = _open(config)
    if normalisation is None:
        statistics = training_statistics(MappedRows(array, train_rows), config, header.source)
    else:
        statistics = (normalisation.shift, normalisation.divisor)
    train, val = (MappedRows(array, rows, "cpu", *statistics) for rows in (train_rows, val_rows))
    fingerprint = vectors_fingerprint(header, array, (train_rows, val_rows), statistics)
    if whole:
        train, val = load_whole(train, header.source), load_whole(val, header.source)
    return DataBundle(train=Split(train), val=Split(val), fingerprint=fingerprint)
