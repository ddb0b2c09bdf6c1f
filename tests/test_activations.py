"""data=activations: training on an activation cache written by autoenc harvest (issue 27, item 2). The cache is
read bit for bit, as data=vectors reads a file: the same split, normalisation, memory-mapping and fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.data.activation_cache import ActivationCache, Shard, read_manifest, write_manifest
from autoenc_cli.data.activations import ActivationsConfig
from autoenc_cli.data.tensors import in_memory, iterate_batches
from autoenc_cli.data.vectors import load_vectors, run_normalisation, split_rows
from autoenc_cli.errors import DataError
from autoenc_cli.evaluation.loading import load_run
from autoenc_cli.folder_layout import CacheLayout

from conftest import read_metrics, run_main, train_in, write_activation_cache

HOOK, OTHER = "model.layers.1", "transformer.h.0.mlp"
WIDTH = 12
SHARD_ROWS = (120, 120, 64)  # a short last shard, as a harvest's final one


def activation_shards(dtype: str = "float16", width: int = WIDTH, seed: int = 0) -> list[np.ndarray]:
    """Features with their own offsets and scales (a residual stream is not centred)."""
    rng = np.random.default_rng(seed)
    offsets, scales = np.linspace(-2, 3, width), np.linspace(0.5, 3, width)
    return [(rng.standard_normal((rows, width)) * scales + offsets).astype(dtype) for rows in SHARD_ROWS]


def make_cache(folder: Path, dtype: str = "float16") -> np.ndarray:
    """A one-hook cache of three shards; returns its rows in cache order."""
    shards = activation_shards(dtype)
    write_activation_cache(folder, {HOOK: shards})
    return np.concatenate(shards)


def whole(split) -> torch.Tensor:
    """A split's rows in split order, however it is held."""
    return torch.cat(list(iterate_batches(split, 64)))


def add_shard(folder: Path, hook: str, values: np.ndarray) -> None:
    """What a harvest does when it finishes one more shard: the file, then the manifest listing it."""
    manifest = read_manifest(folder)
    index = len(manifest.shards)
    np.save(CacheLayout(folder).shard(hook, index), values)
    end = manifest.contexts_done + len(values) // 8
    manifest.shards.append(Shard(len(values), (manifest.contexts_done, end)))
    manifest.sums[hook] = (np.asarray(manifest.sums[hook]) + values.astype(np.float64).sum(0)).tolist()
    write_manifest(folder, manifest)


# ---------------------------------------------------------------------------------------------------
# The rows: bit for bit, in split order, memory-mapped or in memory.


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("load", ["memory", "memmap"])
def test_the_splits_are_the_cache_rows_in_split_order_bit_for_bit(tmp_path, dtype, load):
    rows = make_cache(tmp_path / "cache", dtype)
    config = ActivationsConfig(path=str(tmp_path / "cache"), normalize="none", load=load)
    bundle = load_vectors(config)
    assert in_memory(bundle.train) == (load == "memory") and bundle.input_shape == (WIDTH,)
    train_rows, val_rows = split_rows(len(rows), config)
    assert (len(train_rows), len(val_rows)) == (289, 15)  # val_fraction 0.05 of 304
    assert torch.equal(whole(bundle.train), torch.from_numpy(rows[train_rows].astype(np.float32)))
    assert torch.equal(whole(bundle.val), torch.from_numpy(rows[val_rows].astype(np.float32)))


@pytest.mark.parametrize("load", ["memory", "memmap"])
def test_unit_mean_square_is_the_default_and_scales_the_training_split_to_mean_squared_norm_width(tmp_path, load):
    rows = make_cache(tmp_path / "cache")
    config = ActivationsConfig(path=str(tmp_path / "cache"), load=load)
    assert config.normalize == "unit_mean_square"
    bundle = load_vectors(config)
    train_rows, val_rows = split_rows(len(rows), config)
    train = rows[train_rows].astype(np.float64)
    expected = np.sqrt((train**2).sum(axis=1).mean() / WIDTH)
    normalisation, fingerprint = run_normalisation(config)  # what a run's eval and export derive
    assert normalisation.shift is None and fingerprint == bundle.fingerprint
    divisor = normalisation.divisor
    assert divisor.item() == pytest.approx(expected, rel=1e-6)
    # Exactly the cache's float32 rows divided by that one number, for both splits.
    scale = np.float32(divisor.item())
    assert torch.equal(whole(bundle.train), torch.from_numpy(rows[train_rows].astype(np.float32) / scale))
    assert torch.equal(whole(bundle.val), torch.from_numpy(rows[val_rows].astype(np.float32) / scale))
    assert whole(bundle.train).double().pow(2).sum(dim=1).mean().item() == pytest.approx(WIDTH, rel=1e-5)


def test_memory_and_memory_map_give_the_same_batches_and_fingerprint(tmp_path):
    make_cache(tmp_path / "cache")
    loaded = {
        load: load_vectors(ActivationsConfig(path=str(tmp_path / "cache"), load=load)) for load in ("memory", "memmap")
    }
    assert in_memory(loaded["memory"].train) and not in_memory(loaded["memmap"].train)
    assert loaded["memory"].fingerprint == loaded["memmap"].fingerprint
    batches = {
        load: list(iterate_batches(bundle.train, 32, torch.Generator().manual_seed(5), 2))
        for load, bundle in loaded.items()
    }
    assert len(batches["memory"]) == 10 - 2
    assert all(torch.equal(a, b) for a, b in zip(batches["memory"], batches["memmap"], strict=True))


def test_input_shape_comes_from_the_manifest_alone(tmp_path, monkeypatch):
    make_cache(tmp_path / "cache")

    def no_read(*args, **kwargs):
        raise AssertionError("a shard was opened: the input shape must come from the manifest")

    monkeypatch.setattr(np, "load", no_read)
    assert ActivationsConfig(path=str(tmp_path / "cache")).input_shape() == (WIDTH,)


# ---------------------------------------------------------------------------------------------------
# Hooks, and a cache that a harvest is still writing.


def test_a_cache_of_several_hooks_reads_the_one_named_and_refuses_to_guess(tmp_path):
    residual, mlp = activation_shards(), activation_shards(width=20, seed=1)
    write_activation_cache(tmp_path / "cache", {HOOK: residual, OTHER: mlp})
    for hook, shards in ((HOOK, residual), (OTHER, mlp)):
        config = ActivationsConfig(path=str(tmp_path / "cache"), hook=hook, normalize="none", load="memmap")
        assert config.input_shape() == (shards[0].shape[1],)
        train_rows, _ = split_rows(304, config)
        expected = np.concatenate(shards)[train_rows].astype(np.float32)
        assert torch.equal(whole(load_vectors(config).train), torch.from_numpy(expected))
    with pytest.raises(DataError, match="^[^\n]*$") as error:
        ActivationsConfig(path=str(tmp_path / "cache")).input_shape()
    assert f"holds 2 hooks; name one with data.hook=HOOK ({HOOK}, {OTHER})" in str(error.value)


def test_a_growing_cache_gives_the_shards_listed_when_loaded_and_the_fingerprint_follows_them(tmp_path):
    rows = make_cache(tmp_path / "cache")
    config = ActivationsConfig(path=str(tmp_path / "cache"), normalize="none", load="memmap")
    before = load_vectors(config)
    assert load_vectors(config).fingerprint == before.fingerprint  # loaded again: the same rows, the same hash
    shutil.copytree(tmp_path / "cache", tmp_path / "moved")
    assert load_vectors(ActivationsConfig(path=str(tmp_path / "moved"), normalize="none")).fingerprint == (
        before.fingerprint
    )  # a copy elsewhere is the same data
    more = activation_shards(seed=3)[0]
    add_shard(tmp_path / "cache", HOOK, more)
    # The split loaded before still reads exactly its own rows of the first three shards.
    train_rows, _ = split_rows(len(rows), config)
    assert torch.equal(whole(before.train), torch.from_numpy(rows[train_rows].astype(np.float32)))
    after = load_vectors(config)
    assert len(after.train) + len(after.val) == len(rows) + len(more) and after.fingerprint != before.fingerprint


# ---------------------------------------------------------------------------------------------------
# Through the CLI: train, export, load; resume after the cache grew.

TRAIN = ["model=sparse_fc", "sparsity=topk", "k=4", "model.code_dim=16", "data.batch_size=32", "trainer.epochs=2"]
TRAIN += ["trainer.figures=false", "data.heldout_tokens=0"]  # the test cache has no language model to score with


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    root = tmp_path_factory.mktemp("activations_run")
    rows = make_cache(root / "cache")
    train_in(root, ["train", "data=activations", f"data.path={root / 'cache'}", "data.load=memmap", *TRAIN])
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return root, run_dir, rows


def test_a_short_run_on_the_cache_completes(cache_run):
    _, run_dir, _ = cache_run
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["epochs"] == 2 and metrics["l0"] <= 4
    assert metrics["samples_per_second"] > 0 and np.isfinite(metrics["val_fvu"])


def test_the_export_keeps_the_normalisation_and_encodes_raw_activations_as_the_run(cache_run):
    root, run_dir, rows = cache_run
    export = root / "export"
    assert run_main(["export", f"run={run_dir}", f"out={export}"]) == 0
    run, exported = load_run(run_dir), load_run(export)
    assert run.input_normalisation().method == exported.normalisation.method == "unit_mean_square"
    assert torch.equal(exported.normalisation.divisor, run.input_normalisation().divisor)
    raw = rows[:50]  # float16 rows, as the cache holds them: read as float32 as training reads them
    assert torch.equal(exported.encode(raw), run.encode(raw))
    data = run.load_data()
    _, val_rows = split_rows(len(rows), run.config.data)
    assert torch.equal(run.encode(rows[val_rows[:20]]), run.model.encode(data.val.images[:20]))


def test_resuming_after_the_cache_grew_is_refused_as_changed_data(cache_run, tmp_path, monkeypatch, capsys):
    root, run_dir, _ = cache_run
    cache = shutil.copytree(root / "cache", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "data=activations", f"data.path={cache}", *TRAIN, "trainer.epochs=1"]) == 0
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    add_shard(cache, HOOK, activation_shards(seed=4)[1])
    capsys.readouterr()
    assert run_main(["train", f"resume={run}", "trainer.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the run's data (activations) changed since the run trained" in err, err
    assert read_metrics(run)["epochs"] == 1  # untouched


def test_sharded_rows_read_any_rows_in_the_order_asked(tmp_path):
    rows = make_cache(tmp_path / "cache", "float32")
    cache = ActivationCache.open(tmp_path / "cache")
    sharded = cache.rows(HOOK)
    assert sharded.shape == rows.shape and sharded.dtype == np.float32 and len(sharded) == 304
    asked = np.array([303, 0, 119, 120, 5, 240, 239, 5, -1, 200])  # across shards, repeated, from the end
    np.testing.assert_array_equal(sharded[asked], rows[asked])
    np.testing.assert_array_equal(sharded[np.sort(asked[asked >= 0])], rows[np.sort(asked[asked >= 0])])
    np.testing.assert_array_equal(sharded[100:250:7], rows[100:250:7])
    np.testing.assert_array_equal(sharded[130], rows[130])
    assert sharded[np.array([], dtype=np.int64)].shape == (0, WIDTH)
    with pytest.raises(IndexError):
        sharded[np.array([304])]


def test_a_manifest_without_the_hooks_width_is_refused_as_damaged(tmp_path):
    make_cache(tmp_path / "cache")
    manifest = read_manifest(tmp_path / "cache")
    manifest.widths = {}
    write_manifest(tmp_path / "cache", manifest)
    with pytest.raises(DataError, match="^[^\n]*$") as error:
        ActivationsConfig(path=str(tmp_path / "cache")).input_shape()
    assert f"manifest gives no width or dtype for {HOOK} (KeyError: '{HOOK}'); the activation cache is damaged" in str(
        error.value
    )
