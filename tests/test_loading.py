"""A trained run loads from its own folder without its data: the public API and the commands on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.baselines.pca import PCA
from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k

from conftest import TINY, run_main, train_in


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on a user's .npz, and that file."""
    root = tmp_path_factory.mktemp("npz_run")
    data = root / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (60, 12, 12), dtype=np.uint8), labels=np.arange(60) % 3)
    train_in(
        root,
        ["train", "data=npz", f"data.path={data}", "model.code_dim=8", "trainer.epochs=2", "trainer.figures=false"],
    )
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return run_dir, data


def test_load_run_encodes_and_reconstructs_in_two_lines(npz_run):
    from autoenc_cli import load_run

    run_dir, data = npz_run
    run = load_run(run_dir)
    images = np.load(data)["images"][:5]
    codes, reconstructions = run.encode(images), run.reconstruct(images)
    assert codes.shape == (5, 8) and reconstructions.shape == (5, 1, 12, 12)
    x = torch.as_tensor(images).float().div(255).unsqueeze(1)
    torch.testing.assert_close(reconstructions, run.model(x).reconstruction)
    torch.testing.assert_close(run.decode(codes), reconstructions)
    assert run.config.model.code_dim == 8 and run.phase == "train" and not run.model.training
    with pytest.raises(Exception, match=r"the model takes \(1, 12, 12\)"):
        run.encode(np.zeros((2, 28, 28), dtype=np.uint8))


def test_a_run_whose_data_moved_still_reconstructs_and_eval_names_the_fix(npz_run, tmp_path, capsys):
    run_dir, data = npz_run
    moved = tmp_path / "elsewhere.npz"
    shutil.move(data, moved)
    try:
        out = tmp_path / "out.npz"
        assert run_main(["reconstruct", f"run={run_dir}", f"input={moved}", f"out={out}"]) == 0
        assert np.load(out)["reconstructions"].shape == (60, 1, 12, 12)
        assert run_main(["eval", f"run={run_dir}", f"out={tmp_path / 'e.json'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{data}'" in err and "data.path=" in err, err
        assert run_main(["eval", f"run={run_dir}", "data=npz", f"data.path={moved}", f"out={tmp_path / 'e.json'}"]) == 0
        assert json.loads((tmp_path / "e.json").read_text())["samples"] == 12
    finally:
        shutil.move(moved, data)


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("greedy")
    train_in(
        root,
        [
            "train",
            *TINY,
            "experiment=deep_fc_2d",
            "schedule.epochs_per_stage=1",
            "trainer.epochs=1",
            "trainer.figures=false",
        ],
    )
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize(("checkpoint", "code_dim"), [("stage1", 128), ("stage2", 64), ("stage4", 2), ("best", 2)])
def test_every_checkpoint_reports_its_own_code_size_l0_and_pca(greedy_run, tmp_path, checkpoint, code_dim):
    out = tmp_path / "eval.json"
    assert (
        run_main(["eval", f"run={greedy_run}", f"checkpoint={checkpoint}", "probe.labels_per_class=[]", f"out={out}"])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["code_dim"] == code_dim and report["compression_ratio"] == 784 / code_dim
    assert 0 < report["l0"] <= code_dim
    data = load_mnist_5k(Mnist5kConfig(limit=400))  # the run's split; its PCA has code_dim axes
    expected = PCA(code_dim).fit(data.train.images).reconstruction_mse(data.val.images)
    assert report["pca_mse"] == pytest.approx(expected, rel=1e-9)
    codes = tmp_path / "codes.npz"
    assert run_main(["encode", f"run={greedy_run}", f"checkpoint={checkpoint}", f"out={codes}"]) == 0
    assert np.load(codes)["codes"].shape == (80, code_dim)


def test_stage_checkpoints_record_their_phase_and_code_size(greedy_run):
    from autoenc_cli import load_run

    state = torch.load(greedy_run / "checkpoints" / "stage1.pt", weights_only=True)
    assert (state["phase"], state["code_dim"]) == ("stage1", 128)
    run = load_run(greedy_run, "stage1")
    assert (run.phase, run.model.code_dim) == ("stage1", 128)
    assert run.encode(torch.rand(3, 1, 28, 28)).shape == (3, 128)


def test_load_run_takes_an_exported_folder_as_it_takes_the_run(npz_run, tmp_path):
    from autoenc_cli import load_run
    from autoenc_cli.errors import UserError
    from autoenc_cli.export import export_run

    run_dir, data = npz_run
    export_run(run_dir, tmp_path / "shared")
    shutil.copytree(tmp_path / "shared", tmp_path / "elsewhere")  # shared: no run folder, no checkpoints
    run, exported = load_run(run_dir), load_run(tmp_path / "elsewhere")
    images = np.load(data)["images"][:7]
    assert torch.equal(run.encode(images), exported.encode(images))
    assert torch.equal(run.reconstruct(images), exported.reconstruct(images))
    assert (exported.phase, exported.epoch, exported.model.input_shape) == ("train", run.epoch, (1, 12, 12))
    assert exported.checkpoint == tmp_path / "elsewhere" / "model.safetensors"
    assert len(exported.load_data().val) == 12  # the run's own data, its fingerprint checked
    with pytest.raises(UserError, match="holds one network; leave checkpoint= out"):
        load_run(tmp_path / "elsewhere", checkpoint="last")


def test_the_model_fingerprint_ignores_fields_left_at_their_defaults():
    """A model option added later, at a default that keeps the old network, must not orphan old runs."""
    import dataclasses

    from autoenc_cli.models.fc import FCModelConfig
    from autoenc_cli.schema.resolve import resolve
    from autoenc_cli.training.checkpoint import _version_1_fingerprint, check_checkpoint_belongs, model_fingerprint

    from conftest import compose_config

    config = resolve(compose_config(["model.code_dim=16"]))

    @dataclasses.dataclass
    class WithANewKnob(FCModelConfig):
        new_knob: float = 0.0

    later = dataclasses.replace(config, model=WithANewKnob(**dataclasses.asdict(config.model)))
    assert model_fingerprint(later, (1, 28, 28)) == model_fingerprint(config, (1, 28, 28))
    later.model.new_knob = 0.5  # a value that changes the network is a different model
    assert model_fingerprint(later, (1, 28, 28)) != model_fingerprint(config, (1, 28, 28))
    assert model_fingerprint(config, (1, 28, 28)) != model_fingerprint(config, (1, 8, 8))
    # A checkpoint written before (every field hashed) still belongs to its run.
    state = {"fingerprint": {"model": _version_1_fingerprint(config, (1, 28, 28))}, "input_shape": (1, 28, 28)}
    check_checkpoint_belongs(state, Path("old.pt"), Path("/nonexistent"), config)
