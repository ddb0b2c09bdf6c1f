"""An activation cache: what ``autoenc harvest`` writes and ``data=activations`` reads (layout in
``autoenc_cli.folder_layout``).

The manifest is the cache's only index: a shard exists for readers once the manifest lists it, and the
manifest is replaced atomically after every hook's shard file is in place. A capture killed at any point
leaves a cache whose listed shards are whole; the next harvest continues after the last of them.

``identity`` says what the cache is *of* (model, tokenizer, hooks, context, text, seed, dtype, shard
size, held-out size): a harvest asking for anything else there is refused, never mixed in. Only numpy
and the standard library are used here, so training on a cache needs no language-model package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autoenc_cli.errors import DataError
from autoenc_cli.folder_layout import CacheLayout
from autoenc_cli.io import read_json, write_json

CACHE_FORMAT = "autoenc-activations"
CACHE_VERSION = 1
DTYPES = ("float16", "float32")


@dataclass
class Shard:
    rows: int  # activation rows (tokens) in each hook's file
    contexts: tuple[int, int]  # [first, end) of the training contexts it holds, in stream order


@dataclass
class Manifest:
    identity: dict[str, Any]  # what the cache is of; a harvest asking for another is refused
    widths: dict[str, int]  # hook -> activation width
    target_tokens: int  # rows asked for (the last harvest's tokens=)
    shards: list[Shard] = field(default_factory=list)
    sums: dict[str, list[float]] = field(default_factory=dict)  # hook -> float64 sum of its rows (mean ablation)
    heldout: dict[str, Any] = field(default_factory=dict)  # contexts, tokens, and the baseline losses if scored
    exhausted: bool = False  # the text ended before target_tokens
    seconds: float = 0.0  # capture time, summed over harvests

    @property
    def hooks(self) -> list[str]:
        return list(self.identity["hooks"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.identity["dtype"])

    @property
    def tokens(self) -> int:
        return sum(shard.rows for shard in self.shards)

    @property
    def contexts_done(self) -> int:
        return self.shards[-1].contexts[1] if self.shards else 0

    @property
    def complete(self) -> bool:
        return self.exhausted or self.tokens >= self.target_tokens

    def mean(self, hook: str) -> np.ndarray:
        """The mean activation over every cached row of ``hook`` (float64, (width,))."""
        if not self.tokens:
            raise DataError(f"the activation cache holds no rows of {hook} yet")
        return np.asarray(self.sums[hook], dtype=np.float64) / self.tokens

    def as_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "identity": self.identity,
            "widths": self.widths,
            "target_tokens": self.target_tokens,
            "tokens": self.tokens,
            "complete": self.complete,
            "exhausted": self.exhausted,
            "seconds": self.seconds,
            "heldout": self.heldout,
            "shards": [{"rows": shard.rows, "contexts": list(shard.contexts)} for shard in self.shards],
            "sums": self.sums,  # float64 -> JSON: repr round-trips exactly
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], where: Path) -> "Manifest":
        if value.get("format") != CACHE_FORMAT:
            raise DataError(f"'{where}' is not an activation cache's manifest (autoenc harvest writes them)")
        if value.get("version") != CACHE_VERSION:
            raise DataError(
                f"'{where}' is an activation cache of version {value.get('version')}; "
                f"this autoenc reads version {CACHE_VERSION}: harvest it again"
            )
        try:
            return cls(
                identity=dict(value["identity"]),
                widths={str(hook): int(width) for hook, width in value["widths"].items()},
                target_tokens=int(value["target_tokens"]),
                shards=[Shard(int(s["rows"]), (int(s["contexts"][0]), int(s["contexts"][1]))) for s in value["shards"]],
                sums={str(hook): list(map(float, sums)) for hook, sums in value["sums"].items()},
                heldout=dict(value.get("heldout") or {}),
                exhausted=bool(value.get("exhausted", False)),
                seconds=float(value.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise DataError(f"'{where}' is a damaged activation-cache manifest ({reason})") from None


def read_manifest(folder: Path) -> Optional[Manifest]:
    """The cache's manifest; None when ``folder`` holds none (not a cache, or nothing finished yet)."""
    path = CacheLayout(folder).manifest
    if not path.is_file():
        return None
    value = read_json(path)
    if not value:
        raise DataError(f"'{path}' is not readable JSON; the activation cache is damaged")
    return Manifest.from_json(value, path)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(CacheLayout(folder).manifest, manifest.as_json())


def write_cache(folder: Path, shards: dict[str, list[np.ndarray]], identity: dict[str, Any]) -> Manifest:
    """A finished cache of activations already in memory (tests, benchmarks, a capture of one's own):
    ``shards`` is {hook: [each shard's (rows, width) array]}, every hook with the same rows per shard, all of
    one dtype. The shard files, then the manifest; ``identity``'s hooks and dtype are the arrays'."""
    layout, first = CacheLayout(folder), next(iter(shards.values()))
    for hook, arrays in shards.items():
        layout.hook(hook).mkdir(parents=True, exist_ok=True)
        for index, array in enumerate(arrays):
            np.save(layout.shard(hook, index), array)
    context = int(identity.get("context_size", 2)) - 1  # cached rows per context (position 0 is not cached)
    ends = np.cumsum([0] + [-(-len(array) // context) for array in first]).tolist()
    manifest = Manifest(
        identity={**identity, "hooks": list(shards), "dtype": str(first[0].dtype)},
        widths={hook: int(arrays[0].shape[1]) for hook, arrays in shards.items()},
        target_tokens=sum(len(array) for array in first),
        shards=[Shard(len(array), (ends[index], ends[index + 1])) for index, array in enumerate(first)],
        sums={hook: sum(a.sum(axis=0, dtype=np.float64) for a in arrays).tolist() for hook, arrays in shards.items()},
    )
    write_manifest(folder, manifest)
    return manifest


def is_cache(folder: Path) -> bool:
    return CacheLayout(folder).manifest.is_file()


class ShardedRows:
    """One hook's shards as a single read-only (N, width) array for ``MappedRows``: ``shape``, ``dtype``,
    ``len`` and ``[int index array | slice]``. Each shard is a memory map. A read sorts the rows it is asked
    for (``MappedRows`` asks in ascending order already), so each shard's rows are one run of them: one
    fancy index per shard it touches (a loop over shards, never over rows), then the order asked for."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(array) for array in arrays])
        width = arrays[0].shape[1]
        self.shape = (int(self.starts[-1]), width)
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(self.shape[0]))
        rows = np.asarray(key, dtype=np.int64)
        single = rows.ndim == 0
        rows = np.atleast_1d(rows)
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        order = None if bool(np.all(rows[1:] >= rows[:-1])) else np.argsort(rows, kind="stable")
        ascending = rows if order is None else rows[order]
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        cuts = np.searchsorted(ascending, self.starts)  # where each shard's rows begin among them
        for shard in np.nonzero(cuts[1:] > cuts[:-1])[0]:
            first, end = cuts[shard], cuts[shard + 1]
            out[first:end] = self.arrays[shard][ascending[first:end] - self.starts[shard]]
        if order is not None:
            asked, out = out, np.empty_like(out)
            out[order] = asked
        return out[0] if single else out


@dataclass
class ActivationCache:
    """A finished part of a cache, opened for reading."""

    folder: Path
    manifest: Manifest

    @classmethod
    def open(cls, folder: Path, what: str = "data.path") -> "ActivationCache":
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{what}='{folder}' is not a folder; give the out= folder of an autoenc harvest")
        manifest = read_manifest(folder)
        if manifest is None:
            raise DataError(
                f"{what}='{folder}' is not an activation cache (it has no {CacheLayout(folder).manifest.name}); "
                "write one with autoenc harvest ... out=DIR"
            )
        if not manifest.shards:
            raise DataError(f"{what}='{folder}': the activation cache holds no finished shard yet")
        return cls(folder, manifest)

    def hook(self, hook: Optional[str], what: str = "data.hook") -> str:
        """The hook asked for, or the only one; refuses a hook the cache does not hold."""
        hooks = self.manifest.hooks
        if hook is None:
            if len(hooks) != 1:
                raise DataError(
                    f"the activation cache '{self.folder}' holds {len(hooks)} hooks; name one with "
                    f"{what}=HOOK ({', '.join(hooks)})"
                )
            return hooks[0]
        if hook not in hooks:
            raise DataError(
                f"{what}={hook} is not in the activation cache '{self.folder}'; it holds: {', '.join(hooks)}"
            )
        return hook

    def rows(self, hook: str) -> ShardedRows:
        """Every listed shard of ``hook`` as one memory-mapped array."""
        layout = CacheLayout(self.folder)
        arrays = []
        for index, shard in enumerate(self.manifest.shards):
            path = layout.shard(hook, index)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise DataError(f"'{path}' cannot be read ({reason}); the activation cache is damaged") from None
            if array.shape != (shard.rows, self.manifest.widths[hook]) or array.dtype != self.manifest.dtype:
                raise DataError(
                    f"'{path}' holds {array.shape} {array.dtype}, but the manifest lists ({shard.rows}, "
                    f"{self.manifest.widths[hook]}) {self.manifest.dtype}; the activation cache is damaged"
                )
            arrays.append(array)
        return ShardedRows(arrays)

    def heldout_tokens(self) -> np.ndarray:
        """(contexts, context size) int token ids of held-out text (never in a shard)."""
        path = CacheLayout(self.folder).heldout_tokens
        if not path.is_file():
            raise DataError(f"the activation cache '{self.folder}' has no held-out text ({path.name})")
        return np.load(path)


def shard_contexts(shard_tokens: int, context_size: int, skipped: int) -> int:
    """Contexts per shard: whole contexts, about ``shard_tokens`` rows (each context gives
    ``context_size - skipped`` rows: the positions not cached, such as the beginning-of-sequence one)."""
    return max(1, math.ceil(shard_tokens / (context_size - skipped)))
