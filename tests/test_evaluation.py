"""Using trained runs: eval (metrics, PCA, probes), encode, reconstruct, report.html."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.evaluation.probe import labelled_subset

from conftest import TINY, run_main, train_in

PROBE_FAST = ["probe.labels_per_class=5,all", "probe.steps=30"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    train_in(root, ["train", *TINY, "trainer.epochs=3"])
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return run_dir


def test_eval_reports_reconstruction_pca_compression_and_probes(trained_run):
    assert run_main(["eval", f"run={trained_run}", *PROBE_FAST]) == 0
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["split"] == "val" and result["samples"] == 80 and result["compression_ratio"] == 784 / 64
    assert result["squared_error_per_image"] == pytest.approx(result["mse"] * 784)
    assert result["ae_pca_mse_ratio"] == pytest.approx(result["mse"] / result["pca_mse"])
    assert 10 * np.log10(1 / result["mse"]) == pytest.approx(result["psnr"])
    probe = result["probe"]
    assert probe["5"]["labelled_samples"] == 50 and probe["all"]["labelled_samples"] == 320
    for features in ("codes", "pixels", "pca"):
        assert 0.2 < probe["all"][features] <= 1.0  # well above chance (0.1) on 10 classes


def test_eval_options_finetune_mlp_checkpoint_and_out(trained_run, tmp_path):
    out = tmp_path / "eval_last.json"
    argv = [
        "eval",
        f"run={trained_run}",
        "checkpoint=last",
        "probe.model=mlp",
        "probe.finetune=true",
        "probe.labels_per_class=all",
        "probe.steps=20",
        f"out={out}",
    ]
    assert run_main(argv) == 0
    probe = json.loads(out.read_text())["probe"]
    assert probe["classifier"] == "mlp" and 0 <= probe["all"]["finetune"] <= 1


def test_an_empty_probe_list_skips_the_probes(trained_run, tmp_path, capsys):
    out = tmp_path / "no_probe.json"
    assert run_main(["eval", f"run={trained_run}", "probe.labels_per_class=[]", f"out={out}"]) == 0
    result = json.loads(out.read_text())
    assert "probe" not in result and result["squared_error_per_image"] > 0
    assert "probe accuracy" not in capsys.readouterr().out


def test_eval_on_another_data_set_of_the_same_shape(trained_run, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "same.npz", images=images)
    out = tmp_path / "other.json"
    assert run_main(["eval", f"run={trained_run}", "data=npz", f"data.path={tmp_path / 'same.npz'}", f"out={out}"]) == 0
    assert json.loads(out.read_text())["data"] == "npz" and "probe" not in json.loads(out.read_text())


def test_eval_mistakes_are_one_line_errors(trained_run, tmp_path, capsys):
    np.savez(tmp_path / "small.npz", images=np.zeros((10, 8, 8), dtype=np.uint8))
    (tmp_path / "not_a_checkpoint.pt").write_bytes(b"hello")
    cases = {
        "the run's model takes (1, 28, 28)": ["data=npz", f"data.path={tmp_path / 'small.npz'}"],
        "has no test split": ["split=test"],
        "is not a readable autoenc checkpoint": [f"checkpoint={tmp_path / 'not_a_checkpoint.pt'}"],
        "positive whole numbers or 'all'": ["probe.labels_per_class=[ten]"],
    }
    for expected, extra in cases.items():
        assert run_main(["eval", f"run={trained_run}", *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert run_main(["eval", f"run={empty}"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_a_checkpoint_from_an_incompatible_config_is_rejected(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY, "trainer.epochs=1", "model.code_dim=8", "trainer.figures=false"]) == 0
    (other,) = (tmp_path / "outputs" / "runs").iterdir()
    mixed = tmp_path / "mixed"
    shutil.copytree(trained_run, mixed)
    state = torch.load(other / "checkpoints" / "best.pt", weights_only=True)
    state["config"] = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)["config"]
    torch.save(state, mixed / "checkpoints" / "best.pt")
    assert run_main(["eval", f"run={mixed}"]) == 2
    assert "was not written by the run in" in capsys.readouterr().err  # the fingerprint names the mix-up
    (mixed / "run.json").unlink()  # a folder without an identity: the weights themselves do not fit
    assert run_main(["eval", f"run={mixed}"]) == 2
    assert "its config no longer describes the model that wrote it" in capsys.readouterr().err


def test_encode_writes_codes_and_labels(trained_run, tmp_path):
    assert run_main(["encode", f"run={trained_run}", f"out={tmp_path / 'codes.npz'}", "split=all"]) == 0
    with np.load(tmp_path / "codes.npz") as arrays:
        assert arrays["codes"].shape == (400, 64) and arrays["labels"].shape == (400,)
        assert sorted(set(arrays["split"].tolist())) == ["train", "val"]


def test_reconstruct_from_npz_and_folder(trained_run, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=images)
    assert (
        run_main(["reconstruct", f"run={trained_run}", f"input={tmp_path / 'mine.npz'}", f"out={tmp_path / 'out.npz'}"])
        == 0
    )
    with np.load(tmp_path / "out.npz") as arrays:
        assert arrays["reconstructions"].shape == (6, 1, 28, 28)
        assert 0 <= arrays["reconstructions"].min() and arrays["reconstructions"].max() <= 1
    assert (
        run_main(["reconstruct", f"run={trained_run}", f"input={tmp_path / 'mine.npz'}", f"out={tmp_path / 'pngs'}"])
        == 0
    )
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 6
    assert (
        run_main(["reconstruct", f"run={trained_run}", f"input={tmp_path / 'pngs'}", f"out={tmp_path / 'again.npz'}"])
        == 0
    )


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# A run's own files: none is ever an out=.
RUN_FILES = ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt", "run.json", "eval.json", "history.csv")


def test_eval_out_is_refused_inside_the_run_and_over_an_existing_file(trained_run, tmp_path, capsys):
    """The run's own checkpoints and metrics are never an out= (then resume= would refuse the run); an
    existing file is replaced only with overwrite=true."""
    before = folder_bytes(trained_run)
    inside = (
        f"is inside the run folder '{trained_run}', where only that run writes; choose an out= outside it "
        "(without out=, eval writes the run's own eval.json)"
    )
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    cases = {
        **{f"out={trained_run / name}": f"out='{trained_run / name}' {inside}" for name in RUN_FILES},
        f"out={trained_run}": f"out='{trained_run}' {inside.replace('is inside', 'is')}",
        f"out={mine}": f"out='{mine}' already exists; add overwrite=true to replace it, or choose another out=",
        "out=": "out='' is empty; give a path, e.g. out=eval.json",
    }
    for argument, message in cases.items():
        overwrite = [] if argument == f"out={mine}" else ["overwrite=true"]
        assert run_main(["eval", f"run={trained_run}", argument, *overwrite, "probe.labels_per_class=[]"]) == 2
        assert capsys.readouterr().err == f"autoenc: error: {message}\n"
    assert folder_bytes(trained_run) == before and mine.read_text() == "mine"
    assert run_main(["eval", f"run={trained_run}", f"out={mine}", "overwrite=true", "probe.labels_per_class=[]"]) == 0
    assert json.loads(mine.read_text())["samples"] == 80 and folder_bytes(trained_run) == before


def test_a_file_another_process_writes_after_the_check_is_never_replaced(trained_run, tmp_path, monkeypatch, capsys):
    """The check of out= comes before the model loads; a file that appears at out= in between (another
    command writing the same out=) is left as it is, for eval and encode alike."""
    import autoenc_cli.evaluation.commands as commands

    loading = commands.load_for_command

    def load_while_another_writes(config):
        Path(config.out).write_text("the other process's")
        return loading(config)

    monkeypatch.setattr(commands, "load_for_command", load_while_another_writes)
    for command, name, extra in (("eval", "e.json", ["probe.labels_per_class=[]"]), ("encode", "c.npz", [])):
        out = tmp_path / name
        assert run_main([command, f"run={trained_run}", f"out={out}", *extra]) == 2
        assert "was written by another process meanwhile; it is left as it is" in capsys.readouterr().err
        assert out.read_text() == "the other process's" and sorted(tmp_path.glob(".*tmp")) == []


def test_reconstruct_of_a_folder_keeps_each_input_name(trained_run, tmp_path, capsys):
    from PIL import Image

    inputs = tmp_path / "scans"
    (inputs / "sub").mkdir(parents=True)
    names = ["cat.png", "dog.jpg", "sub/owl.bmp", "x.jpg", "x.png"]  # read_user_images' (sorted) order
    for index, name in enumerate(names):
        Image.fromarray(np.full((28, 28), 40 * index, dtype=np.uint8)).save(inputs / name)
    out, arrays = tmp_path / "out", tmp_path / "arrays.npz"
    assert run_main(["reconstruct", f"run={trained_run}", f"input={inputs}", f"out={out}"]) == 0
    assert run_main(["reconstruct", f"run={trained_run}", f"input={inputs}", f"out={arrays}"]) == 0
    written = ["cat.png", "dog.png", "sub/owl.png", "x.jpg.png", "x.png.png"]  # x.png and x.jpg would clash
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == written
    with np.load(arrays) as loaded:
        expected = np.round(loaded["reconstructions"][:, 0] * 255).astype(np.uint8)
    for name, image in zip(written, expected):
        with Image.open(out / name) as png:  # each file holds its own input's reconstruction
            assert np.array_equal(np.asarray(png), image)
    capsys.readouterr()
    assert run_main(["reconstruct", f"run={trained_run}", f"input={inputs}", f"out={out}"]) == 2
    assert f"out='{out}' already holds 5 reconstructions (cat.png, ...); add overwrite=true" in capsys.readouterr().err
    before = folder_bytes(inputs)
    assert run_main(["reconstruct", f"run={trained_run}", f"input={inputs}", f"out={inputs}", "overwrite=true"]) == 2
    assert f"out='{inputs}' already holds other files (cat.png, dog.jpg, x.jpg, ...)" in capsys.readouterr().err
    assert folder_bytes(inputs) == before  # the user's images are never taken for earlier outputs
    assert run_main(["reconstruct", f"run={trained_run}", f"input={inputs}", f"out={out}", "overwrite=true"]) == 0
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == written


def test_report_html_embeds_metrics_and_every_figure(trained_run):
    assert run_main(["eval", f"run={trained_run}", *PROBE_FAST]) == 0
    page = (trained_run / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    figures = sorted(path.name for path in (trained_run / "figures").glob("*.png"))
    assert sorted(Path(source).name for source in sources) == figures and len(figures) >= 6
    assert all((trained_run / source).is_file() for source in sources)
    assert "val_mse" in page and "Semi-supervised probe" in page and "code_dim: 64" in page


def _browser() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
    )


@pytest.mark.skipif(_browser() is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_report_renders_in_a_headless_browser_without_broken_images(trained_run, tmp_path):
    checker = trained_run / "report_check.html"
    script = (
        "<script>window.addEventListener('load', () => { const broken = [...document.images]"
        ".filter(i => !i.complete || i.naturalWidth === 0).length; document.title = 'broken=' + broken + "
        "' images=' + document.images.length; });</script>"
    )
    checker.write_text((trained_run / "report.html").read_text().replace("</body>", script + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    try:
        dom = subprocess.run(
            [_browser(), *flags, "--dump-dom", checker.as_uri()], capture_output=True, text=True, timeout=120
        ).stdout
        shot = tmp_path / "report.png"
        subprocess.run(
            [_browser(), *flags, "--window-size=1200,2400", f"--screenshot={shot}", checker.as_uri()],
            capture_output=True,
            timeout=120,
        )
    finally:
        checker.unlink()
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    assert title.startswith("broken=0 images=") and int(title.split("images=")[1]) >= 6, title
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_labelled_subset_takes_exactly_n_per_class():
    labels = torch.tensor([0, 1, 2] * 20 + [3])
    chosen = labelled_subset(labels, 5, seed=0)
    counts = torch.bincount(labels[chosen], minlength=4).tolist()
    assert counts == [5, 5, 5, 1] and chosen.unique().numel() == chosen.numel()
    assert not torch.equal(chosen.sort().values, labelled_subset(labels, 5, seed=1).sort().values)
    assert labelled_subset(labels, None, seed=0).numel() == labels.numel()


@pytest.mark.parametrize("command", ["eval", "encode", "reconstruct"])
def test_command_help_lists_the_options(command, capsys):
    assert run_main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: autoenc {command} run=RUN_DIR") and "checkpoint: best" in out
