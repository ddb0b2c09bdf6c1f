"""Data as users have it: every Pillow image mode and bit depth, labels of any kind, arrays too large
for memory, NaN and infinity, and what encode/reconstruct write (issue 12, section 3)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoenc_cli.data.files import (
    ImageFolderConfig,
    NpzConfig,
    check_fits_in_memory,
    load_image_folder,
    load_npz,
    pixels,
    read_user_images,
)
from autoenc_cli.errors import DataError

from conftest import run_cli, run_main, train_in

# ---------------------------------------------------------------------------------------------------
# Files made here, also used by the bad-input battery (test_bad_inputs.py).


def npz_declaring(path: Path, shape: tuple[int, ...], dtype: str = "uint8") -> Path:
    """A .npz whose 'images' header declares ``shape`` but holds no pixels: tiny on disk, huge if loaded."""
    header = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(header, fields)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue())
    return path


HUGE_SHAPE = (10**7, 3, 4096, 4096)  # about 500 PB as uint8


def gray16(folder: Path, values: list[int], size: int = 8) -> Path:
    """16-bit grayscale PNGs (mode I;16), one per value, every pixel that value."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(values):
        Image.fromarray(np.full((size, size), value, dtype=np.uint16)).save(folder / f"{index}.png")
    return folder


def float_tiffs(folder: Path, values: list[float], size: int = 8) -> Path:
    """32-bit float TIFFs (mode F)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(values):
        Image.fromarray(np.full((size, size), value, dtype=np.float32)).save(folder / f"{index}.tif")
    return folder


def int32_tiffs(folder: Path, values: list[int], size: int = 8) -> Path:
    """32-bit integer TIFFs (mode I)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(values):
        Image.fromarray(np.full((size, size), value, dtype=np.int32)).save(folder / f"{index}.tif")
    return folder


def one_image_per_class(folder: Path, count: int) -> Path:
    for index in range(count):
        (folder / f"class{index}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / f"class{index}" / "a.png")
    return folder


def user_data_mistakes(root: Path) -> dict[str, tuple[list[str], str]]:
    """Data files a user may have that cannot be used: name -> (train overrides, what the line must say)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    nan = rng.random((20, 1, 6, 6)).astype(np.float32)
    nan[0, 0, 1, 2], nan[3, 0, 0, 0], nan[4, 0, 0, 0] = np.nan, np.nan, np.inf
    above = rng.random((20, 6, 6))
    above[2, 3, 4] = 255.0
    arrays = {
        "nan.npz": {"images": nan},
        "above_one.npz": {"images": above},
        "int64.npz": {"images": images.astype(np.int64)},
        "fractional_labels.npz": {"images": images, "labels": np.r_[np.zeros(19), 0.5]},
        "nan_labels.npz": {"images": images, "labels": np.r_[np.full(19, 1.0), np.nan]},
        "id_labels.npz": {"images": images, "labels": np.arange(20) * 1000},
        "short_labels.npz": {"images": images, "labels": np.zeros(19)},
        "complex_labels.npz": {"images": images, "labels": np.zeros(20, dtype=complex)},
        "not_one_hot.npz": {"images": images, "labels": np.full((20, 3), 0.5)},
    }
    for name, members in arrays.items():
        np.savez(root / name, **members)
    np.savez(root / "object_labels.npz", images=images, labels=np.array([{"a": 1}] * 20, dtype=object))
    npz_declaring(root / "huge.npz", HUGE_SHAPE)
    npz_declaring(root / "huge_float.npz", (10**6, 1, 10**5, 10**4), "float64")
    int32_tiffs(root / "int32_tiffs", [0, 70_000])
    float_tiffs(root / "float_tiffs", [0.5, 1.5])
    float_tiffs(root / "nan_tiffs", [0.5, float("nan")])
    one_image_per_class(root / "one_per_class", 6)
    npz = ["data=npz", "model.code_dim=8"]
    folder = ["data=image_folder", "data.image_size=[8,8]", "data.channels=1", "model.code_dim=8"]
    return {
        "nan": ([*npz, f"data.path={root / 'nan.npz'}"], "2 NaN and 1 infinite values (first at index (0, 0, 1, 2))"),
        "above one": ([*npz, f"data.path={root / 'above_one.npz'}"], "(first at index (2, 3, 4): 255;"),
        "int64": ([*npz, f"data.path={root / 'int64.npz'}"], "got int64, values "),
        "fractional labels": ([*npz, f"data.path={root / 'fractional_labels.npz'}"], "(first at index (19,): 0.5)"),
        "nan labels": ([*npz, f"data.path={root / 'nan_labels.npz'}"], "1 labels are NaN or infinite"),
        "id labels": ([*npz, f"data.path={root / 'id_labels.npz'}"], "labels have 20 distinct values for 20 images"),
        "short labels": ([*npz, f"data.path={root / 'short_labels.npz'}"], "labels must have shape (20,)"),
        "complex labels": ([*npz, f"data.path={root / 'complex_labels.npz'}"], "labels of type complex128"),
        "not one-hot": ([*npz, f"data.path={root / 'not_one_hot.npz'}"], "are not one-hot"),
        "object labels": ([*npz, f"data.path={root / 'object_labels.npz'}"], "'labels' holds Python objects"),
        "huge": ([*npz, f"data.path={root / 'huge.npz'}"], "loading needs about"),
        "huge float": ([*npz, f"data.path={root / 'huge_float.npz'}"], "loading needs about"),
        "int32 tiff": ([*folder, f"data.path={root / 'int32_tiffs'}"], "(mode I) with values 70000..70000"),
        "float tiff": ([*folder, f"data.path={root / 'float_tiffs'}"], "32-bit float images (mode F) must lie in"),
        "nan tiff": ([*folder, f"data.path={root / 'nan_tiffs'}"], "64 NaN values (first at index (0, 0))"),
        "one per class": ([*folder, f"data.path={root / 'one_per_class'}"], "labels have 6 distinct values"),
    }


# ---------------------------------------------------------------------------------------------------
# Image modes: intensities scaled by the mode's bit depth, never clipped to 8 bits.


def load_folder(folder: Path, channels: int = 1, size: int = 8) -> torch.Tensor:
    bundle = load_image_folder(ImageFolderConfig(path=str(folder), image_size=[size, size], channels=channels))
    return torch.cat([bundle.train.images, bundle.val.images])


def test_16_bit_grayscale_png_keeps_its_intensities(tmp_path):
    images = load_folder(gray16(tmp_path / "g", [0, 1000, 32768, 65535]))
    assert sorted(round(value, 6) for value in images.flatten(1).mean(1).tolist()) == [
        0.0,
        round(1000 / 65535, 6),
        round(32768 / 65535, 6),
        1.0,
    ]


def test_16_bit_values_survive_resizing_without_8_bit_rounding(tmp_path):
    # 1000/65535 = 0.015259; through 8 bits it would become 4/255 = 0.015686.
    images = load_folder(gray16(tmp_path / "g", [1000, 1000], size=10), size=4)
    torch.testing.assert_close(images, torch.full_like(images, 1000 / 65535), rtol=0, atol=1e-6)


def test_reconstruct_input_folder_reads_16_bit_images_with_their_depth(tmp_path):
    images = read_user_images(gray16(tmp_path / "g", [32768]), (1, 8, 8))
    torch.testing.assert_close(images, torch.full((1, 1, 8, 8), 32768 / 65535), rtol=0, atol=1e-6)


def pixels_of(image: Image.Image) -> np.ndarray:
    return pixels(image, "'test image'")


def test_every_pillow_mode_loads_with_the_right_scale(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 128, 0])
    palette.putpixel((0, 0), 1)
    cases = {
        "1": (Image.new("1", (1, 1), 1), [1.0]),
        "L": (Image.new("L", (1, 1), 51), [0.2]),
        "P": (palette, [1.0, 128 / 255, 0.0]),
        "RGB": (Image.new("RGB", (1, 1), (255, 0, 51)), [1.0, 0.0, 0.2]),
        "RGBA on black": (Image.new("RGBA", (1, 1), (255, 102, 0, 51)), [0.2, 0.08, 0.0]),
        "LA on black": (Image.new("LA", (1, 1), (255, 51)), [0.2]),
        "RGBa premultiplied": (Image.new("RGBa", (1, 1), (51, 0, 0, 51)), [0.2, 0.0, 0.0]),
        "I;16": (Image.fromarray(np.array([[32768]], dtype=np.uint16)), [32768 / 65535]),
        "I;16B": (Image.frombytes("I;16B", (1, 1), bytes([0x80, 0x00])), [32768 / 65535]),
        "I": (Image.fromarray(np.array([[65535]], dtype=np.int32)), [1.0]),
        "F": (Image.fromarray(np.array([[0.25]], dtype=np.float32)), [0.25]),
        "CMYK": (Image.new("CMYK", (1, 1), (0, 0, 0, 0)), [1.0, 1.0, 1.0]),
        "YCbCr": (Image.new("YCbCr", (1, 1), (255, 128, 128)), [1.0, 1.0, 1.0]),
        "HSV": (Image.new("HSV", (1, 1), (85, 255, 255)), [0.0, 1.0, 0.0]),
    }
    for name, (image, expected) in cases.items():
        np.testing.assert_allclose(pixels_of(image)[0, 0], expected, atol=0.01, err_msg=name)
    lab = pixels_of(Image.new("LAB", (1, 1), (255, 128, 128)))  # L* = 100: white
    np.testing.assert_allclose(lab[0, 0], [1.0, 1.0, 1.0], atol=0.01)


def test_modes_saved_to_files_load_through_the_folder_loader(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.save(folder / "palette.png")
    Image.new("RGBA", (4, 4), (255, 255, 255, 0)).save(folder / "transparent.png")  # white, fully transparent
    Image.new("1", (4, 4), 1).save(folder / "bilevel.png")
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(folder / "float.tif")
    Image.fromarray(np.full((4, 4), 16384, dtype=np.int32)).save(folder / "int32.tif")
    Image.new("CMYK", (4, 4), (0, 0, 0, 255)).save(folder / "cmyk.jpg")  # full black ink
    means = {file.name: float(image.mean()) for file, image in zip(sorted(folder.iterdir()), load_sorted(folder))}
    assert means["palette.png"] == pytest.approx(1.0)
    assert means["transparent.png"] == pytest.approx(0.0)  # composited on black
    assert means["bilevel.png"] == pytest.approx(1.0)
    assert means["float.tif"] == pytest.approx(0.5)
    assert means["int32.tif"] == pytest.approx(16384 / 65535)
    assert means["cmyk.jpg"] == pytest.approx(0.0, abs=0.02)


def load_sorted(folder: Path) -> torch.Tensor:
    from autoenc_cli.data.files import image_files, read_image_files

    return torch.as_tensor(read_image_files(image_files(folder), 1, (4, 4)))


def test_colour_and_gray_convert_both_ways(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (4, 4), 102).save(tmp_path / "gray.png")
    gray = load_sorted(tmp_path)  # channels=1: luma 0.299 for pure red
    assert gray[0].mean().item() == pytest.approx(0.4) and gray[1].mean().item() == pytest.approx(0.299, abs=1e-4)
    from autoenc_cli.data.files import image_files, read_image_files

    colour = read_image_files(image_files(tmp_path), 3, (4, 4))
    np.testing.assert_allclose(colour[0, :, 0, 0], [0.4, 0.4, 0.4], atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: int32_tiffs(folder, [5, -3]), "is a 32-bit integer image (mode I) with values -3..-3"),
        (lambda folder: float_tiffs(folder, [0.5, 2.0]), "64 of 64 values lie outside [0, 1]"),
        (lambda folder: float_tiffs(folder, [0.5, float("inf")]), "64 infinite values (first at index (0, 0))"),
    ],
)
def test_values_no_rule_can_scale_are_refused_by_mode(tmp_path, make, message):
    with pytest.raises(DataError) as caught:
        load_folder(make(tmp_path / "images"))
    assert message in str(caught.value) and "1.tif" in str(caught.value)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_every_16_bit_byte_order_is_scaled_by_65535(mode):
    order = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
    image = Image.frombytes(mode, (2, 1), np.array([32768, 65535], dtype=order).tobytes())
    np.testing.assert_allclose(pixels_of(image)[0, :, 0], [32768 / 65535, 1.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Labels: any kind a user may have becomes class ids 0..C-1 at load time, or is refused there.


def npz_bundle(tmp_path: Path, labels: np.ndarray):
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "labelled.npz", images=images, labels=labels)
    return load_npz(NpzConfig(path=str(tmp_path / "labelled.npz"), val_fraction=0.25))


def all_labels(bundle) -> list[int]:
    return sorted(torch.cat([bundle.train.labels, bundle.val.labels]).tolist())


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        (np.array(["cat", "dog", "owl", "dog"] * 5), ("cat", "dog", "owl")),
        (np.array([b"cat", b"dog"] * 10), ("cat", "dog")),
        (np.array([-1, 5, 100, 5] * 5), ("-1", "5", "100")),
        (np.array([3.0, 7.0] * 10), ("3", "7")),
        (np.array([True, False] * 10), ("False", "True")),
        (np.eye(3)[[0, 1, 2, 1] * 5], ("0", "1", "2")),
        (np.array([[4], [9]] * 10), ("4", "9")),
        (np.array([10**12, 2] * 10, dtype=np.int64), ("2", "1000000000000")),
    ],
    ids=["strings", "bytes", "negative-and-gaps", "whole-floats", "bools", "one-hot", "column", "huge-ids"],
)
def test_labels_of_any_kind_become_class_ids(tmp_path, labels, names):
    bundle = npz_bundle(tmp_path, labels)
    assert bundle.num_classes == len(names) and bundle.class_names == names
    ids = all_labels(bundle)
    assert min(ids) == 0 and max(ids) == len(names) - 1 and len(ids) == 20


def test_integer_labels_already_0_to_c_keep_their_values(tmp_path):
    labels = np.arange(20) % 4
    assert all_labels(npz_bundle(tmp_path, labels)) == sorted(labels.tolist())


def test_image_folder_keeps_its_class_names(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.new("L", (4, 4), 0).save(tmp_path / name / f"{index}.png")
    bundle = load_image_folder(ImageFolderConfig(path=str(tmp_path), image_size=[4, 4], channels=1))
    assert bundle.class_names == ("cats", "dogs") and bundle.num_classes == 2


def test_the_mistakes_each_say_what_and_where(tmp_path):
    for name, (overrides, message) in user_data_mistakes(tmp_path).items():
        path = Path(next(o for o in overrides if o.startswith("data.path=")).partition("=")[2])
        with pytest.raises(DataError) as caught:
            if path.suffix == ".npz":
                NpzConfig(path=str(path)).input_shape()  # the config check's header rules first
                load_npz(NpzConfig(path=str(path)))
            else:
                load_image_folder(ImageFolderConfig(path=str(path), image_size=[8, 8], channels=1))
        assert message in str(caught.value), (name, str(caught.value))


# ---------------------------------------------------------------------------------------------------
# Memory: a declared shape too large is refused from the header, before anything is allocated.


def test_a_huge_declared_shape_is_refused_from_the_header(tmp_path, monkeypatch):
    path = npz_declaring(tmp_path / "huge.npz", HUGE_SHAPE)
    assert path.stat().st_size < 1000

    def no_load(*args, **kwargs):
        raise AssertionError("np.load was called: the refusal must come before loading")

    monkeypatch.setattr(np, "load", no_load)
    for action in (
        lambda: NpzConfig(path=str(path)).input_shape(),
        lambda: load_npz(NpzConfig(path=str(path))),
        lambda: read_user_images(path, (3, 4096, 4096)),
    ):
        with pytest.raises(DataError, match=r"loading needs about [\d,.]+ TB of memory, but [\d,.]+ \w+ is available"):
            action()


def test_memory_check_compares_with_what_is_available(monkeypatch):
    from autoenc_cli.data import files

    monkeypatch.setattr(files, "available_memory", lambda: 1000)
    check_fits_in_memory((10, 10), 5, "small")  # 500 bytes
    with pytest.raises(DataError, match="'x': loading needs about 1.2 KB of memory, but 1.0 KB is available"):
        check_fits_in_memory((10, 24), 5, "'x'")
    monkeypatch.setattr(files, "available_memory", lambda: None)  # unknown: no refusal
    check_fits_in_memory((10**9, 10**9), 5, "unknown")


def test_available_memory_is_a_positive_number_here():
    from autoenc_cli.data.files import available_memory

    available = available_memory()
    assert available is None or available > 0


# ---------------------------------------------------------------------------------------------------
# Through the CLI, with a run trained on a user's npz whose labels are strings.


@pytest.fixture(scope="module")
def string_label_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("user_data")
    rng = np.random.default_rng(0)
    labels = np.array(["cat", "dog", "owl"])[np.arange(60) % 3]
    images = (rng.random((60, 8, 8)) * 0.2 + (np.arange(60) % 3)[:, None, None] * 0.3).astype(np.float32)
    np.savez(root / "pets.npz", images=images, labels=labels)
    overrides = [f"data.path={root / 'pets.npz'}", "model.code_dim=8", "trainer.epochs=1", "trainer.figures=false"]
    train_in(root, ["train", "data=npz", *overrides])
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return root, run_dir


def test_eval_probes_string_labels_without_a_traceback(string_label_run, capsys):
    root, run = string_label_run
    out = root / "eval.json"
    argv = ["eval", f"run={run}", "probe.labels_per_class=2,all", "probe.steps=5", f"out={out}", "threads=1"]
    assert run_main(argv) == 0
    probe = json.loads(out.read_text())["probe"]
    assert probe["all"]["labelled_samples"] == 48 and 0 <= probe["all"]["codes"] <= 1
    assert f"wrote {out}" in capsys.readouterr().out.replace("\n", "")


def test_encode_writes_class_names_and_prints_the_path_it_wrote(string_label_run, capsys):
    root, run = string_label_run
    assert run_main(["encode", f"run={run}", f"out={root / 'codes'}", "split=all"]) == 0
    written = root / "codes.npz"  # .npz appended, and that is the path printed
    printed = capsys.readouterr().out.replace("\n", "")
    assert f"to {written.resolve()}" in printed, printed
    with np.load(written) as arrays:
        assert arrays["class_names"].tolist() == ["cat", "dog", "owl"]
        assert sorted(set(arrays["labels"].tolist())) == [0, 1, 2] and arrays["codes"].shape == (60, 8)


def test_an_existing_output_is_replaced_only_with_overwrite(string_label_run, capsys):
    root, run = string_label_run
    out = root / "again.npz"
    out.write_bytes(b"the user's own file")
    assert run_main(["encode", f"run={run}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"autoenc: error: out='{out}' already exists; add overwrite=true to replace it, or choose another out="
    )
    assert out.read_bytes() == b"the user's own file"
    assert run_main(["encode", f"run={run}", f"out={out}", "overwrite=true"]) == 0
    with np.load(out) as arrays:
        assert "codes" in arrays


def test_reconstruct_refuses_earlier_pngs_and_replaces_all_of_them_with_overwrite(string_label_run, capsys):
    root, run = string_label_run
    np.savez(root / "six.npz", images=np.zeros((6, 8, 8), dtype=np.uint8))
    np.savez(root / "three.npz", images=np.zeros((3, 8, 8), dtype=np.uint8))
    pngs = root / "pngs"
    assert run_main(["reconstruct", f"run={run}", f"input={root / 'six.npz'}", f"out={pngs}"]) == 0
    assert f"wrote 6 reconstructions to {pngs.resolve()}" in capsys.readouterr().out.replace("\n", "")
    assert run_main(["reconstruct", f"run={run}", f"input={root / 'three.npz'}", f"out={pngs}"]) == 2
    assert "already holds 6 reconstructions (0000.png, ...); add overwrite=true" in capsys.readouterr().err
    argv = ["reconstruct", f"run={run}", f"input={root / 'three.npz'}", f"out={pngs}", "overwrite=true"]
    (pngs / "notes.txt").write_text("mine")  # a user's own file: never mixed with reconstructions
    assert run_main(argv) == 2
    assert "holds other files (notes.txt" in capsys.readouterr().err
    (pngs / "notes.txt").unlink()
    assert run_main(argv) == 0
    assert sorted(path.name for path in pngs.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert run_main(["reconstruct", f"run={run}", f"input={root / 'three.npz'}", f"out={run / 'figures'}"]) == 2
    assert "is inside the run folder" in capsys.readouterr().err


def test_reconstruct_from_a_folder_of_16_bit_pngs_feeds_the_model_their_intensities(string_label_run):
    root, run = string_label_run
    folder = gray16(root / "sixteen", [32768, 65535])
    assert run_main(["reconstruct", f"run={run}", f"input={folder}", f"out={root / 'r16.npz'}", "threads=1"]) == 0
    with np.load(root / "r16.npz") as arrays:
        np.testing.assert_allclose(arrays["inputs"].reshape(2, -1).mean(1), [32768 / 65535, 1.0], atol=1e-6)


def test_reconstruct_refuses_a_huge_input_before_loading_it(string_label_run, capsys):
    root, run = string_label_run
    huge = npz_declaring(root / "huge_input.npz", (10**9, 1, 8, 8), "float64")
    assert run_main(["reconstruct", f"run={run}", f"input={huge}", f"out={root / 'never.npz'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loading needs about" in err and not (root / "never.npz").exists()


def test_threads_knob_is_applied_by_every_run_command(string_label_run, tmp_path):
    root, run = string_label_run
    before = torch.get_num_threads()
    try:
        for argv in (
            ["eval", f"run={run}", "probe.labels_per_class=all", "probe.steps=2", f"out={tmp_path / 'e.json'}"],
            ["encode", f"run={run}", f"out={tmp_path / 'c.npz'}"],
            ["reconstruct", f"run={run}", f"input={root / 'pets.npz'}", f"out={tmp_path / 'r.npz'}"],
        ):
            torch.set_num_threads(2)
            assert run_main([*argv, "threads=1"]) == 0
            assert torch.get_num_threads() == 1, argv[0]
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# The version.


def test_version_is_the_package_version_for_every_spelling(tmp_path):
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    expected = f"autoenc {pyproject['project']['version']}"
    for argv in (["--version"], ["-V"], ["train", "--version"], ["eval", "--version"]):
        result = run_cli(argv, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == expected and not result.stderr, argv
    assert re.fullmatch(r"autoenc \d+\.\d+\.\d+\S*", expected)
