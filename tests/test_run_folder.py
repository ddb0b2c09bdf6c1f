"""A run folder is a record that is never silently changed, lost or mixed with another run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoenc_cli.training.checkpoint import load_checkpoint

from conftest import TINY, read_metrics, run_main

QUICK = [*TINY, "trainer.epochs=1", "trainer.figures=false"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("autoenc: error: "), err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "hydra.run.dir=run"]) == 0
    return tmp_path / "run"


def test_resuming_a_finished_run_leaves_it_as_it_is(finished, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    assert run_main(["train", f"resume={finished}"]) == 0
    assert "is already complete; nothing to resume" in capsys.readouterr().out
    # the up-arrow: the same command with resume= added; equal values are accepted
    assert run_main(["train", *QUICK, "hydra.run.dir=run", f"resume={finished}"]) == 0
    after = {name: data for name, data in snapshot(finished).items() if not name.startswith(".hydra/resumed")}
    assert after == before


def test_a_changed_value_on_resume_and_a_conflicting_pair_are_refused(finished, capsys):
    assert run_main(["train", f"resume={finished}", "optimizer.lr=0.5"]) == 2
    assert "'optimizer.lr=0.5' would change optimizer.lr (saved: 0.001)" in one_line_error(capsys)
    assert run_main(["train", *QUICK, "sparsity=topk", "k=5", "sparsity.topk.k=16"]) == 2
    assert "k=5 and sparsity.topk.k=16 set the same value" in one_line_error(capsys)
    assert run_main(["train", "-m", *QUICK, "sparsity=topk", "k=5,6", "sparsity.topk.k=16"]) == 2
    assert "sweep job [" in one_line_error(capsys)


def test_resume_composes_with_the_runs_own_options_so_their_keys_can_be_restated(tmp_path, monkeypatch, capsys):
    """A run trained with options other than the defaults (noise=gaussian, sparsity=topk): the keys of those
    options, in either spelling of a shorthand, are compared with the run's values, not refused as keys the
    default options lack."""
    monkeypatch.chdir(tmp_path)
    options = ["noise=gaussian", "noise.variance=0.3", "sparsity=topk", "k=4"]
    assert run_main(["train", *QUICK, *options, "hydra.run.dir=run"]) == 0
    before = snapshot(tmp_path / "run")
    for same in (["noise.variance=0.3", "k=4"], ["sparsity.topk.k=4"], ["l0=4"], ["noise=gaussian"], options):
        capsys.readouterr()
        assert run_main(["train", "resume=run", *same]) == 0, same
        assert "is already complete; nothing to resume" in capsys.readouterr().out
    refusals = {
        "noise.variance=0.5": "'noise.variance=0.5' would change noise.variance (saved: 0.3)",
        "sparsity.topk.k=16": "'sparsity.topk.k=16' would change sparsity.topk.k (saved: 4)",
        "noise=none": "'noise=none' would change noise (saved: {'name': 'gaussian'",
        "noise.varience=0.3": "unknown key 'noise.varience'; allowed keys in noise: name, mean, variance, clip",
        "experiment=smoke": "'experiment=smoke' would change experiment (saved: None)",  # a preset: no key of its own
    }
    for override, message in refusals.items():
        assert run_main(["train", "resume=run", override]) == 2, override
        assert message in one_line_error(capsys)
    after = {name: data for name, data in snapshot(tmp_path / "run").items() if not name.startswith(".hydra/resumed")}
    assert after == before
    assert run_main(["train", "resume=run", "noise.variance=0.3", "trainer.epochs=2"]) == 0  # extended, same options
    assert read_metrics(tmp_path / "run")["epochs"] == 2


def test_resume_keeps_a_run_trained_with_lists_of_options_as_it_was(tmp_path, monkeypatch, capsys):
    """Hydra's record of a run's choices omits lists: a run of two sparsity members and a list of loggers
    still resumes alone, its members' values re-stated, and an extension logs where the run logged."""
    monkeypatch.chdir(tmp_path)
    lists = ["sparsity=[topk,lifetime]", "sparsity.topk.k=4", "sparsity.lifetime.k=3", "logger=[tensorboard]"]
    assert run_main(["train", *QUICK, *lists, f"logger.tensorboard.dir={tmp_path / 'tb'}", "hydra.run.dir=run"]) == 0
    for same in ([], ["sparsity.topk.k=4"], lists):
        capsys.readouterr()
        assert run_main(["train", "resume=run", *same]) == 0, same
        assert "is already complete; nothing to resume" in capsys.readouterr().out
    assert run_main(["train", "resume=run", "sparsity.lifetime.k=5"]) == 2
    assert "would change sparsity.lifetime.k (saved: 3)" in one_line_error(capsys)
    assert run_main(["train", "resume=run", "trainer.epochs=2"]) == 0
    saved = OmegaConf.create(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"])
    assert saved.logger.tensorboard.dir == str(tmp_path / "tb") and saved.sparsity.topk.k == 4
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # the run's and its extension's


def test_a_new_run_never_writes_into_another_runs_folder(finished, capsys):
    before = snapshot(finished)
    assert run_main(["train", *QUICK, "hydra.run.dir=run"]) == 2
    assert f"resume={Path('run')}" in one_line_error(capsys)
    assert run_main(["train", *QUICK, "trainer.epochs=2", "hydra.run.dir=run"]) == 2
    capsys.readouterr()
    assert snapshot(finished) == before  # Hydra's own files included: refused before anything was written


def test_a_foreign_checkpoint_is_refused_by_resume_and_eval(finished, tmp_path, capsys):
    assert run_main(["train", *QUICK, "model.code_dim=8", "hydra.run.dir=other"]) == 0
    assert run_main(["train", *QUICK, "hydra.run.dir=twin"]) == 0  # same config, another run
    shutil.copy(tmp_path / "twin" / "checkpoints" / "last.pt", finished / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert run_main(["train", f"resume={finished}"]) == 2
    assert "was not written by the run in" in one_line_error(capsys)
    assert run_main(["eval", f"run={finished}", f"checkpoint={tmp_path / 'other' / 'checkpoints' / 'best.pt'}"]) == 2
    assert "was not written by the run in" in one_line_error(capsys)
    assert not (finished / "eval.json").exists()


def test_the_report_shows_the_config_that_was_used_and_only_this_runs_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY, "trainer.epochs=1", "hydra.run.dir=run"]) == 0
    run = tmp_path / "run"
    (run / "figures" / "stray.png").write_bytes((run / "figures" / "dictionary.png").read_bytes())
    hydra_config = run / ".hydra" / "config.yaml"
    hydra_config.write_text(hydra_config.read_text().replace("code_dim: 64", "code_dim: 999"))
    assert run_main(["eval", f"run={run}", "probe.labels_per_class=[]"]) == 0  # rewrites report.html
    page = (run / "report.html").read_text()
    assert "stray.png" not in page and "dictionary.png" in page
    assert "code_dim: 64" in page and "code_dim: 999" not in page and "was edited after the run started" in page


def test_paths_are_stored_absolute_so_eval_works_from_anywhere(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.savez("mine.npz", images=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    assert run_main(["train", "data=npz", "data.path=mine.npz", "trainer.epochs=1", "hydra.run.dir=run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_main(["eval", f"run={tmp_path / 'run'}"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["samples"] == 8


def test_eval_on_a_data_file_that_changed_since_training_says_so(tmp_path, monkeypatch, capsys):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("mine.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8))
    assert run_main(["train", "data=npz", "data.path=mine.npz", "trainer.epochs=1", "hydra.run.dir=run"]) == 0
    np.savez("mine.npz", images=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8))  # 10 more images: a new split
    capsys.readouterr()
    for command in (["eval", "run=run"], ["encode", "run=run", "out=codes.npz"]):
        assert run_main(command) == 2
        assert "changed since the run trained" in one_line_error(capsys)


def test_a_denoising_eval_gives_pca_the_same_corrupted_inputs(tmp_path, monkeypatch):
    from autoenc_cli.baselines.pca import PCA
    from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k
    from autoenc_cli.noise.corruptions import MaskConfig, MaskingNoise
    from autoenc_cli.training.metrics import corrupted_inputs
    from autoenc_cli.training.parts import validation_noise_generator

    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "noise=mask", "hydra.run.dir=run"]) == 0
    assert run_main(["eval", "run=run", "probe.labels_per_class=[]"]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["inputs"] == "corrupted (noise=mask)"
    data = load_mnist_5k(Mnist5kConfig(limit=400))
    import torch

    noisy = corrupted_inputs(
        data.val, 1024, MaskingNoise(MaskConfig()), validation_noise_generator(0, torch.device("cpu"))
    )
    expected = PCA(64).fit(data.train.images).reconstruction_mse(noisy, data.val.images)
    assert report["pca_mse"] == pytest.approx(expected, rel=1e-9)
    assert read_metrics(tmp_path / "run")["pca_val_mse"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("overrides", "data"),
    [
        (["model.code_dim=1"], None),  # a 1-unit code
        (["data.val_fraction=0.003"], None),  # a validation split of one image (400 x 0.003 rounds to 1)
        ([], (2, 8, 8)),  # two channels
        (["model=conv", "model.encoder=[{channels: 2, kernel: 3}]"], (5, 8, 8)),  # five channels
    ],
)
def test_a_finished_run_with_odd_shapes_still_completes_with_every_figure_that_makes_sense(
    tmp_path, monkeypatch, overrides, data
):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    extra = []
    if data is not None:
        np.savez("odd.npz", images=np.random.default_rng(0).integers(0, 256, (30, *data), dtype=np.uint8))
        extra = ["data=npz", "data.path=odd.npz"]
    assert run_main(["train", *TINY, "trainer.epochs=1", *extra, *overrides, "hydra.run.dir=run"]) == 0
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed" and "val_mse" in metrics
    assert {"reconstructions.png", "dictionary.png", "loss_curve.png", "latent_scatter.png"} <= set(metrics["figures"])
    assert all((tmp_path / "run" / "figures" / name).is_file() for name in metrics["figures"])


def test_new_runs_and_sweeps_get_folders_of_their_own(finished, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    cases = {
        "is inside the run folder": ["train", *QUICK, "output_root=run"],
        "is inside the run folder ": ["train", *QUICK, "hydra.run.dir=run/checkpoints"],
        "already holds files": ["train", *QUICK, "hydra.run.dir=mine"],
        "already holds a run": ["train", "-m", *QUICK, "optimizer.lr=0.001", "hydra.sweep.dir=run"],
        "continues in that run's own folder": ["train", f"resume={finished}", "hydra.run.dir=elsewhere"],
    }
    before = snapshot(finished)
    for expected, argv in cases.items():
        assert run_main(argv) == 2, argv
        assert expected.strip() in one_line_error(capsys), argv
    assert snapshot(finished) == before and not (tmp_path / "elsewhere").exists()
    assert sorted(path.name for path in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_refused_first_command_leaves_no_outputs_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for mistake in (["trainer.epochs=-1"], ["model=sparse_fc", "sparsity=topk", "k=65"]):
        assert run_main(["train", *mistake]) == 2
    assert list(tmp_path.iterdir()) == []


def test_resuming_a_sweep_with_other_values_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", *QUICK, "optimizer.lr=0.001,0.002", "hydra.sweep.dir=sweep"]) == 0
    before = snapshot(tmp_path / "sweep")
    capsys.readouterr()
    assert run_main(["train", "-m", *QUICK, "optimizer.lr=0.005,0.002,0.003", "resume=sweep"]) == 2
    assert "resume a sweep with the command that started it" in one_line_error(capsys)
    assert run_main(["train", "-m", *QUICK, "optimizer.lr=0.001,0.002", "resume=sweep"]) == 0  # the same: fine
    after = snapshot(tmp_path / "sweep")
    assert {name: data for name, data in after.items() if name in before and name.endswith(".json")} == {
        name: data for name, data in before.items() if name.endswith(".json")
    }


def test_resume_refuses_data_that_changed_since_training(tmp_path, monkeypatch, capsys):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("mine.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8))
    assert run_main(["train", "data=npz", "data.path=mine.npz", "trainer.epochs=1", "hydra.run.dir=run"]) == 0
    np.savez("mine.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8))
    before = snapshot(tmp_path / "run")
    capsys.readouterr()
    assert run_main(["train", "resume=run", "trainer.epochs=2"]) == 2
    assert "changed since the run trained" in one_line_error(capsys)
    after = {name: data for name, data in snapshot(tmp_path / "run").items() if not name.startswith(".hydra/resumed")}
    assert after == before


def test_load_run_takes_what_the_command_line_takes(finished):
    import numpy as np

    from autoenc_cli import load_run
    from autoenc_cli.errors import UserError

    run = load_run(finished)
    digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    codes = run.encode(digits)
    assert codes.shape == (3, 64) and run.encode(digits[0]).shape == (1, 64)  # one image
    assert run.decode(codes.numpy()).shape == (3, 1, 28, 28)  # numpy codes
    assert run.encode(np.zeros((0, 28, 28), np.uint8)).shape == (0, 64)
    with pytest.raises(UserError, match=r"lie in \[0, 1\]"):
        run.encode(digits.astype(np.float32))  # 0..255 floats
    with pytest.raises(UserError, match="NaN"):
        run.encode(np.full((2, 28, 28), np.nan, np.float32))
