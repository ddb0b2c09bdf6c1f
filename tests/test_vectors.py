"""data=vectors: an N x D float array (.npy or .npz), memory-mapped when it does not fit in memory,
normalised with the training split's statistics (issue 13)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.data import vectors
from autoenc_cli.data.tensors import MappedRows, in_memory, iterate_batches
from autoenc_cli.data.vectors import VectorsConfig, load_vectors, open_array, read_header, split_rows
from autoenc_cli.errors import DataError, UserError
from autoenc_cli.evaluation.loading import load_run
from autoenc_cli.schema.resolve import resolve

from conftest import compose_config, read_metrics, run_main

WIDTH = 24


def activations(count: int = 600, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """Features with their own offsets and scales, so standardising them is not a no-op."""
    rng = np.random.default_rng(seed)
    offsets, scales = np.linspace(-3, 5, width), np.linspace(0.5, 4, width)
    return (rng.standard_normal((count, width)) * scales + offsets).astype(np.float32)


def header_only_npy(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """A .npy whose header declares ``shape`` but holds no values: tiny on disk, huge if loaded."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False, "shape": shape})
    return path


def whole(split) -> torch.Tensor:
    """A split's rows in split order, however it is held."""
    return torch.cat(list(iterate_batches(split, 64)))


# ---------------------------------------------------------------------------------------------------
# The file: headers, memory maps, .npz members.


def test_input_shape_comes_from_the_header_alone(tmp_path, monkeypatch):
    huge = header_only_npy(tmp_path / "huge.npy", (10**9, 512))  # declares 2 TB, holds nothing
    np.savez(tmp_path / "acts.npz", acts=activations())

    def no_read(*args, **kwargs):
        raise AssertionError("values were read: the input shape must come from the header")

    monkeypatch.setattr(np, "load", no_read)
    monkeypatch.setattr(np, "memmap", no_read)
    assert VectorsConfig(path=str(huge)).input_shape() == (512,)  # load=auto: it would be memory-mapped
    assert VectorsConfig(path=str(tmp_path / "acts.npz")).input_shape() == (WIDTH,)
    with pytest.raises(DataError, match=r"loading needs about 2.0 TB of memory, but .* use data.load=auto"):
        VectorsConfig(path=str(huge), load="memory").input_shape()


@pytest.mark.parametrize("layout", ["npy", "npz", "npz fortran order", "npz float64 big-endian"])
def test_a_memory_map_reads_exactly_the_stored_rows(tmp_path, layout):
    values = activations(50)
    stored = {"npz fortran order": np.asfortranarray(values), "npz float64 big-endian": values.astype(">f8")}
    array = stored.get(layout, values)
    if layout == "npy":
        path = tmp_path / "acts.npy"
        np.save(path, array)
    else:  # among other arrays, so the member's offset in the archive matters
        path = tmp_path / "acts.npz"
        np.savez(path, first=np.arange(7), acts=array, last=np.ones(3))
    header = read_header(path, None if layout == "npy" else "acts")
    mapped = open_array(header)
    assert isinstance(mapped, np.memmap) and mapped.shape == (50, WIDTH)
    rows = np.array([41, 3, 17, 3 + 1, 0])
    np.testing.assert_array_equal(MappedRows(mapped, rows)[:].numpy(), values[rows])
    np.testing.assert_array_equal(MappedRows(mapped, rows)[2].numpy(), values[17])


def test_an_npz_with_one_array_needs_no_member_name(tmp_path):
    np.savez(tmp_path / "acts.npz", activations())  # stored as arr_0
    bundle = load_vectors(VectorsConfig(path=str(tmp_path / "acts.npz")))
    assert bundle.input_shape == (WIDTH,) and len(bundle.train) + len(bundle.val) == 600


def test_a_compressed_member_loads_whole_when_it_fits_and_is_refused_for_a_memory_map(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "packed.npz", acts=activations())
    bundle = load_vectors(VectorsConfig(path=str(tmp_path / "packed.npz")))
    assert in_memory(bundle.train)
    message = r"is compressed \(np.savez_compressed\), which cannot be memory-mapped \(data.load=memmap\); save it"
    with pytest.raises(DataError, match=message):
        VectorsConfig(path=str(tmp_path / "packed.npz"), load="memmap").input_shape()
    monkeypatch.setattr(vectors, "available_memory", lambda: 10_000)  # less than the float32 copy and the archive's
    with pytest.raises(DataError, match=r"cannot be memory-mapped \(115.2 KB does not fit in memory\)"):
        VectorsConfig(path=str(tmp_path / "packed.npz")).input_shape()


def test_auto_memory_maps_what_does_not_fit_in_half_the_free_memory(tmp_path, monkeypatch):
    np.save(tmp_path / "acts.npy", activations())  # 600 x 24 float32: 57,600 bytes
    monkeypatch.setattr(vectors, "available_memory", lambda: 2 * 57_600)
    assert in_memory(load_vectors(VectorsConfig(path=str(tmp_path / "acts.npy"))).train)
    monkeypatch.setattr(vectors, "available_memory", lambda: 2 * 57_600 - 1)
    bundle = load_vectors(VectorsConfig(path=str(tmp_path / "acts.npy")))
    assert not in_memory(bundle.train) and isinstance(bundle.train.images.array, np.memmap)


# ---------------------------------------------------------------------------------------------------
# Splits and normalisation.


@pytest.mark.parametrize("load", ["memory", "memmap"])
def test_standardize_gives_the_training_split_mean_0_and_std_1(tmp_path, load):
    values = activations()
    np.save(tmp_path / "acts.npy", values)
    config = VectorsConfig(path=str(tmp_path / "acts.npy"), normalize="standardize", load=load)
    bundle = load_vectors(config)
    train = whole(bundle.train).double()
    np.testing.assert_allclose(train.mean(dim=0).numpy(), 0, atol=2e-6)
    np.testing.assert_allclose(train.std(dim=0, unbiased=False).numpy(), 1, atol=2e-6)
    # Validation is normalised with the training split's statistics, not its own.
    train_rows, val_rows = split_rows(600, config)
    mean, std = values[train_rows].astype(np.float64).mean(0), values[train_rows].astype(np.float64).std(0)
    np.testing.assert_allclose(whole(bundle.val).numpy(), (values[val_rows] - mean) / std, atol=2e-6)
    assert whole(bundle.val).double().mean(dim=0).abs().max() > 0.01


@pytest.mark.parametrize("load", ["memory", "memmap"])
def test_unit_mean_square_scales_every_vector_by_one_number_to_mean_squared_norm_d(tmp_path, load):
    values = activations()
    np.save(tmp_path / "acts.npy", values)
    config = VectorsConfig(path=str(tmp_path / "acts.npy"), normalize="unit_mean_square", load=load)
    bundle = load_vectors(config)
    train = whole(bundle.train).double()
    assert train.pow(2).sum(dim=1).mean().item() == pytest.approx(WIDTH, rel=1e-6)
    train_rows, _ = split_rows(600, config)
    ratio = values[train_rows] / train.numpy()
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-6)  # one scale for every value
    assert ratio[0, 0] == pytest.approx(np.sqrt((values[train_rows].astype(np.float64) ** 2).sum(1).mean() / WIDTH))


def test_none_keeps_the_values_and_limit_splits_as_every_data_set_does(tmp_path):
    values = activations()
    np.save(tmp_path / "acts.npy", values)
    config = VectorsConfig(path=str(tmp_path / "acts.npy"), limit=100, val_fraction=0.25, split_seed=3)
    bundle = load_vectors(config)
    train_rows, val_rows = split_rows(600, config)
    assert (len(train_rows), len(val_rows)) == (75, 25) and len(set(train_rows) | set(val_rows)) == 100
    # make_bundle's seeded subset, then split_by_fraction's seeded shuffle: the same rows, the same order.
    keep = torch.randperm(600, generator=torch.Generator().manual_seed(3))[:100]
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(val_rows, keep[order[:25]].numpy())
    assert torch.equal(whole(bundle.train), torch.from_numpy(values[train_rows]))


def test_statistics_of_a_large_training_split_come_from_a_seeded_sample(tmp_path):
    values = activations()
    np.save(tmp_path / "acts.npy", values)
    config = VectorsConfig(path=str(tmp_path / "acts.npy"), normalize="standardize", stats_rows=50, load="memmap")
    first, second = load_vectors(config).train.images, load_vectors(config).train.images
    assert torch.equal(first.shift, second.shift) and torch.equal(first.divisor, second.divisor)
    train_rows, _ = split_rows(600, config)
    sample = train_rows[torch.randperm(480, generator=torch.Generator().manual_seed(0))[:50].numpy()]
    np.testing.assert_allclose(first.shift.numpy(), values[sample].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(first.divisor.numpy(), values[sample].astype(np.float64).std(0), rtol=1e-6)


def test_memory_and_memory_map_give_the_same_batches_and_fingerprint(tmp_path):
    np.save(tmp_path / "acts.npy", activations())
    loaded = {
        load: load_vectors(VectorsConfig(path=str(tmp_path / "acts.npy"), normalize="standardize", load=load))
        for load in ("memory", "memmap")
    }
    assert in_memory(loaded["memory"].train) and not in_memory(loaded["memmap"].train)
    assert loaded["memory"].fingerprint == loaded["memmap"].fingerprint
    for skip in (0, 3):
        batches = {
            load: list(iterate_batches(bundle.train, 32, torch.Generator().manual_seed(5), skip))
            for load, bundle in loaded.items()
        }
        assert len(batches["memory"]) == 15 - skip
        assert all(torch.equal(a, b) for a, b in zip(batches["memory"], batches["memmap"]))


def test_the_fingerprint_follows_the_values_and_the_split_not_the_files_place(tmp_path):
    values = activations(3000)
    np.save(tmp_path / "acts.npy", values)
    fingerprint = lambda path, **knobs: load_vectors(VectorsConfig(path=str(path), **knobs)).fingerprint  # noqa: E731
    original = fingerprint(tmp_path / "acts.npy")
    shutil.copy(tmp_path / "acts.npy", tmp_path / "copy.npy")  # a new path and modification time
    assert fingerprint(tmp_path / "copy.npy") == original
    assert fingerprint(tmp_path / "acts.npy", split_seed=1) != original
    assert fingerprint(tmp_path / "acts.npy", normalize="standardize") != original
    edited = values.copy()
    edited[2999, 0] += 1  # the last row is always among the sampled ones
    np.save(tmp_path / "copy.npy", edited)
    assert fingerprint(tmp_path / "copy.npy") != original


# ---------------------------------------------------------------------------------------------------
# The config check: fully-connected models, MSE, an output that can reach the values.


def compose_vectors(*overrides: str) -> list[str]:
    from conftest import SAMPLE_VECTORS

    return ["data=vectors", f"data.path={SAMPLE_VECTORS}", "model=sparse_fc", *overrides]


def test_the_preset_sets_a_linear_output_that_an_explicit_choice_overrides():
    assert resolve(compose_config(compose_vectors())).model.output_activation == "linear"
    sigmoid = resolve(compose_config(compose_vectors("model.output_activation=sigmoid")))  # normalize=none: allowed
    assert sigmoid.model.output_activation == "sigmoid"


def refusals(root: Path) -> list[tuple[list[str], str]]:
    """(train overrides after data=vectors, what the one line must say)."""
    np.save(root / "good.npy", activations(20))
    np.save(root / "cube.npy", np.zeros((10, 4, 2), dtype=np.float32))
    np.save(root / "objects.npy", np.array([[{"a": 1}]] * 4, dtype=object), allow_pickle=True)
    np.save(root / "ints.npy", np.zeros((10, 4), dtype=np.int64))
    np.save(root / "one.npy", np.zeros((1, 4), dtype=np.float32))
    nan = activations(20)
    nan[7, 2] = np.nan
    np.save(root / "nan.npy", nan)
    np.savez_compressed(root / "packed.npz", acts=activations(20))
    np.savez(root / "two.npz", a=activations(20), b=activations(20))
    (root / "notes.txt").write_text("not an array")
    good = f"data.path={root / 'good.npy'}"
    return [
        (
            [good, "model=conv"],
            f"model.name='conv' is not allowed: needs images of shape C x H x W; the data gives ({WIDTH},)",
        ),
        ([good, "loss=bce"], "loss='bce' is not allowed: binary cross-entropy needs targets in [0, 1]"),
        (
            [good, "data.normalize=standardize", "model.output_activation=sigmoid"],
            "model.output_activation='sigmoid' is not allowed: data.normalize=standardize gives values outside "
            "[0, 1], which a sigmoid cannot reach; use model.output_activation=linear",
        ),
        ([good, "noise=mask"], f"picks pixels of C x H x W images; the data gives ({WIDTH},)"),
        ([good, "data.normalize=zscore"], "data.normalize='zscore' is not allowed: choose one of none, standardize"),
        ([good, "data.member=acts"], "data.member='acts' is not allowed:"),
        ([f"data.path={root / 'missing.npy'}"], "is not a file; give a .npy or .npz holding an N x D float array"),
        ([f"data.path={root / 'notes.txt'}"], "is neither a .npy nor a .npz file"),
        ([f"data.path={root / 'cube.npy'}"], "vectors must be an N x D array; got shape (10, 4, 2) (reshape with"),
        ([f"data.path={root / 'objects.npy'}"], "holds Python objects, which autoenc does not unpickle"),
        ([f"data.path={root / 'ints.npy'}"], "vectors must be float16, float32 or float64; got int64 (convert"),
        ([f"data.path={root / 'one.npy'}"], "need at least 2 vectors of at least 1 value; got shape (1, 4)"),
        (
            [f"data.path={root / 'nan.npy'}"],
            "NaN or infinite values in 1 of 20 vectors read (first: row 7); vectors must be finite",
        ),
        ([f"data.path={root / 'packed.npz'}", "data.load=memmap"], "is compressed (np.savez_compressed)"),
        ([f"data.path={root / 'two.npz'}"], "holds 2 arrays (a, b); name one with data.member=NAME"),
        ([f"data.path={root / 'two.npz'}", "data.member=c"], "has no array 'c' (it has: a, b)"),
    ]


def test_refusals_are_one_line_naming_the_value_and_what_is_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for overrides, message in refusals(tmp_path):
        code = run_main(["train", "data=vectors", "trainer.epochs=1", *overrides])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("autoenc: error: "), (overrides, err)
        assert message in lines[0], (overrides, lines[0])
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


# ---------------------------------------------------------------------------------------------------
# A run on a memory-mapped file, through the CLI: what it reads, what it writes, eval and encode on it.


class RecordingArray:
    """A memory map that notes how many rows each read asks for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        self.reads.append(len(rows))
        return self.array[rows]


TRAIN = ["data.normalize=standardize", "model=sparse_fc", "sparsity=topk", "k=4", "model.code_dim=16"]
TRAIN += ["trainer.epochs=2", "data.batch_size=64", "trainer.eval_batch_size=256"]


@pytest.fixture(scope="module")
def mapped_run(tmp_path_factory) -> tuple[Path, Path, list[RecordingArray]]:
    """3,000 x 24 vectors that 'do not fit' (a tiny memory budget): memory-mapped, 256-row statistic reads."""
    root = tmp_path_factory.mktemp("vectors_run")
    np.save(root / "acts.npy", activations(3000))
    opened: list[RecordingArray] = []
    original_open = vectors.open_array

    def recording_open(header):
        opened.append(RecordingArray(original_open(header)))
        return opened[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vectors, "available_memory", lambda: 10_000)
        patch.setattr(vectors, "CHUNK_BYTES", 256 * WIDTH * 4)
        patch.setattr(vectors, "open_array", recording_open)
        patch.chdir(root)
        assert run_main(["train", "data=vectors", f"data.path={root / 'acts.npy'}", *TRAIN]) == 0
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return root, run_dir, opened


def test_training_reads_rows_per_batch_and_never_the_whole_array(mapped_run):
    _, run_dir, opened = mapped_run
    (array,) = opened
    assert isinstance(array.array, np.memmap)
    # The largest read is the fingerprint's 1,024 sampled rows; training reads 64 rows a step.
    assert max(array.reads) == 1024 and array.reads.count(64) == 2 * (2400 // 64)
    assert sum(array.reads) > 2 * 3000  # two epochs of training and validation came from the map
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics.get("pca_val_mse") is None  # PCA needs it in memory


def test_image_figures_are_skipped_with_a_note_and_the_others_drawn(mapped_run):
    _, run_dir, _ = mapped_run
    notes = read_metrics(run_dir)["notes"]
    assert notes == [
        f"figures/{name} skipped: vector data (D={WIDTH}) has no image layout"
        for name in ("reconstructions.png", "dictionary.png")
    ]
    drawn = sorted(path.name for path in (run_dir / "figures").iterdir())
    assert drawn == ["code_density.png", "latent_map.png", "latent_scatter.png", "loss_curve.png"]


def test_the_same_run_in_memory_gives_the_same_numbers(mapped_run, tmp_path, monkeypatch):
    root, run_dir, _ = mapped_run
    monkeypatch.chdir(tmp_path)
    argv = ["train", "data=vectors", f"data.path={root / 'acts.npy'}", *TRAIN, "data.load=memory"]
    assert run_main([*argv, "trainer.figures=false"]) == 0
    (in_memory_run,) = (tmp_path / "outputs" / "runs").iterdir()
    mapped, loaded = read_metrics(run_dir), read_metrics(in_memory_run)
    assert (loaded["train_loss"], loaded["val_loss"]) == (mapped["train_loss"], mapped["val_loss"])
    assert loaded["pca_val_mse"] > 0  # in memory, the PCA baseline is fitted


def test_eval_and_encode_work_on_the_run_and_reconstruct_refuses(mapped_run, capsys):
    root, run_dir, _ = mapped_run
    metrics = read_metrics(run_dir)
    out = root / "eval.json"
    assert run_main(["eval", f"run={run_dir}", f"out={out}"]) == 0  # re-derives the statistics, in memory now
    scores = json.loads(out.read_text())
    assert scores["samples"] == 600 and scores["mse"] == pytest.approx(metrics["best_val_loss"], rel=1e-6)
    assert run_main(["encode", f"run={run_dir}", f"out={root / 'codes.npz'}", "split=all"]) == 0
    with np.load(root / "codes.npz") as arrays:
        assert arrays["codes"].shape == (3000, 16) and (arrays["codes"] != 0).sum(axis=1).max() <= 4
        assert (arrays["split"] == "train").sum() == 2400 and "labels" not in arrays
    capsys.readouterr()
    np.save(root / "more.npy", activations(5))
    assert run_main(["reconstruct", f"run={run_dir}", f"input={root / 'more.npy'}", f"out={root / 'r.npz'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"takes vectors of shape ({WIDTH},); use autoenc encode" in err
    other = ["eval", f"run={run_dir}", "data=vectors", f"data.path={root / 'acts.npy'}"]
    assert run_main(other) == 2
    assert (
        "data.normalize='none' is not allowed: the run trained on data.normalize=standardize" in capsys.readouterr().err
    )


def test_a_loaded_run_encodes_raw_vectors_as_training_normalised_them(mapped_run):
    root, run_dir, _ = mapped_run
    run = load_run(run_dir)
    data = run.load_data()
    assert data.input_shape == (WIDTH,) and len(data.val) == 600
    assert whole(data.train).double().mean(dim=0).abs().max() < 1e-5  # standardised, as in training
    raw = np.load(root / "acts.npy")
    _, val_rows = split_rows(len(raw), run.config.data)
    first = val_rows[:100]
    codes = run.encode(raw[first])  # the file's raw rows: the run's own statistics applied
    assert torch.equal(codes, run.model.encode(data.val.images[:100]))
    normalisation = run.input_normalisation()
    reconstructions = run.reconstruct(raw[first])  # raw vectors back
    expected = run.model(data.val.images[:100]).reconstruction * normalisation.divisor + normalisation.shift
    assert torch.equal(reconstructions, expected)
    torch.testing.assert_close(run.decode(codes), reconstructions)
    assert torch.equal(run.encode(torch.from_numpy(raw[first]).double()), codes)  # float64 read as float32
    nan = raw[:3].copy()
    nan[2, 5] = np.nan
    refusals = [
        (np.zeros((2, 28, 28), dtype=np.uint8), f"vectors of shape (2, 28, 28); the model takes N x {WIDTH}"),
        (np.zeros((2, WIDTH + 1)), f"vectors of shape (2, {WIDTH + 1}); the model takes N x {WIDTH}"),
        (np.array([["a"] * WIDTH]), "vectors of dtype <U1; the model takes real numbers"),
        (nan, "NaN or infinite values in 1 of 3 vectors (first: row 2); vectors must be finite"),
    ]
    for values, message in refusals:
        with pytest.raises(UserError, match="^[^\n]*$") as error:
            run.encode(values)
        assert message in str(error.value)


def test_other_vectors_are_normalised_with_the_runs_statistics_and_moved_data_still_serves(mapped_run, tmp_path):
    root, run_dir, _ = mapped_run
    other = activations(50, seed=7) * 3 + 2  # not the run's data: its own statistics differ from the run's
    np.save(tmp_path / "other.npy", other)
    argv = ["encode", f"run={run_dir}", "data=vectors", "data.normalize=standardize", "split=all"]
    assert run_main([*argv, f"data.path={tmp_path / 'other.npy'}", f"out={tmp_path / 'other.npz'}"]) == 0
    order = np.concatenate(split_rows(len(other), VectorsConfig(path="other.npy")))
    run = load_run(run_dir)
    expected = run.encode(other[order])
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "other.npz")["codes"]), expected)
    moved = tmp_path / "moved.npy"
    shutil.move(root / "acts.npy", moved)
    try:
        with pytest.raises(DataError, match="^[^\n]*$") as error:
            load_run(run_dir).encode(other)
        assert "the run's data.normalize=standardize statistics come from its data, which cannot be read" in str(
            error.value
        )
        # Named at its new place, the run's own data is recognised by its fingerprint: its statistics are the run's.
        assert run_main([*argv, f"data.path={moved}", f"out={tmp_path / 'moved.npz'}"]) == 0
        assert np.load(tmp_path / "moved.npz")["codes"].shape == (3000, 16)
    finally:
        shutil.move(moved, root / "acts.npy")


def test_a_memory_mapped_run_resumes_when_its_data_now_loads_whole(mapped_run, tmp_path, monkeypatch):
    _, run_dir, _ = mapped_run
    copy = shutil.copytree(run_dir, tmp_path / "run")  # the fixture's run stays as it is for the other tests
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", f"resume={copy}", "trainer.epochs=3", "trainer.figures=false"]) == 0
    assert read_metrics(copy)["epochs"] == 3  # the same fingerprint in memory: accepted, trained on
