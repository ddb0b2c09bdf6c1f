"""data=activations: a language model's activations captured by ``autoenc harvest`` (an activation cache).

The cache is trained on exactly as data=vectors trains on a file (``RowsConfig``: the seeded split,
normalisation statistics from the training split, whole in memory when it fits or read per batch from
memory maps, the data fingerprint, the export's ``Normalisation``). The one thing that differs is where
the rows come from: one hook's shards, read as one (tokens, width) array (``ShardedRows``).

A cache that a harvest is still writing is read as its manifest lists it when the data is loaded: the
shards finished then. The data fingerprint covers the shard list, so a run resumed or scored after the
cache grew is refused as for any changed data (``the run's data ... changed since the run trained``),
never silently given other rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

from autoenc_cli.data.activation_cache import ActivationCache, ShardedRows
from autoenc_cli.data.vectors import NORMALIZATIONS, RowsConfig, check_rows, load_vectors
from autoenc_cli.errors import ConfigError, DataError
from autoenc_cli.registry import register
from autoenc_cli.schema import choice, number


@dataclass(frozen=True)
class CacheHeader:
    """What a cache's manifest says about one hook's rows, before any shard is opened. Holds the manifest
    it was read from, so the rows opened later are the shards counted here even while a harvest adds more."""

    cache: ActivationCache
    hook: str
    shape: tuple[int, int]
    dtype: np.dtype

    @classmethod
    def of(cls, cache: ActivationCache, hook: str) -> "CacheHeader":
        manifest = cache.manifest
        try:
            width, dtype = int(manifest.widths[hook]), np.dtype(manifest.identity["dtype"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"'{cache.folder}': the activation cache's manifest gives no width or dtype for {hook} "
                f"({type(error).__name__}: {error}); the activation cache is damaged"
            ) from None
        return cls(cache, hook, (manifest.tokens, width), dtype)

    @property
    def source(self) -> str:
        return f"data.path='{self.cache.folder}' (hook {self.hook})"

    @property
    def mappable(self) -> bool:
        return True  # every shard is a .npy: memory-mapped

    @property
    def described(self) -> dict[str, Any]:
        """What the cache is of and how many rows each shard held when loaded (not where it lies)."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "hook": self.hook,
            "shards": [shard.rows for shard in self.cache.manifest.shards],
            "identity": self.cache.manifest.identity,
        }


@dataclass
class ActivationsConfig(RowsConfig):
    name: str = "activations"
    path: str = MISSING  # the folder of an activation cache (autoenc harvest's out=)
    hook: Optional[str] = None  # the hook's module path (model.layers.15); null: the cache's only hook
    # held-out tokens of the cache's text (never trained on) that the language model scores the SAE on at
    # the end of a run: loss recovered and KL with the SAE spliced in at the hook; 0 skips the scoring
    heldout_tokens: int = number(8192, ge=0)
    # none | standardize (per feature) | unit_mean_square (one scale: mean squared norm = the width, the
    # sparse-autoencoder literature's convention); the statistics come from the training split
    normalize: str = choice("unit_mean_square", NORMALIZATIONS)
    batch_size: int = number(4096, ge=1)  # tokens per step, as sparse autoencoders on language models are trained
    # held out from the cache's rows for validation, seeded (a cache has many: 5% of 2 million tokens is 100,000)
    val_fraction: float = number(0.05, gt=0, lt=1)

    def check(self) -> None:
        if self.hook == "":
            raise ConfigError("hook", "", "a hook's module path (model.layers.15), or null for the cache's only hook")

    def rows_header(self) -> CacheHeader:
        cache = ActivationCache.open(Path(self.path))
        header = CacheHeader.of(cache, cache.hook(self.hook))
        check_rows(header)
        return header

    def open_rows(self, header: CacheHeader) -> ShardedRows:
        return header.cache.rows(header.hook)


register(ActivationsConfig)(load_vectors)
