"""The installed command end to end: run folders, multirun, help, and user mistakes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from autoenc_cli.training.checkpoint import load_checkpoint

from conftest import SAMPLE_NPZ, TINY, only_run_dir, read_metrics, run_cli, run_main

RUN_FILES = [
    "metrics.json",
    "history.csv",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "figures/reconstructions.png",
    "figures/latent_map.png",
    "figures/dictionary.png",
    "figures/loss_curve.png",
]


def test_train_writes_a_complete_run_folder(tmp_path):
    result = run_cli(["train", *TINY, "trainer.epochs=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert str(run_dir.name) in result.stdout and "final metrics" in result.stdout
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    metrics = read_metrics(run_dir)
    for key in (
        "train_loss",
        "val_loss",
        "val_mse",
        "epochs",
        "code_dim",
        "num_parameters",
        "train_seconds",
        "samples_per_second",
    ):
        assert key in metrics, key
    assert metrics["status"] == "completed" and metrics["epochs"] == 3 and metrics["code_dim"] == 64
    assert metrics["num_parameters"] == 784 + 784 * 64 + 64 + 64 * 784 + 784  # the learned input mean first
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert {"epoch", "train_loss", "val_loss", "val_mse", "lr", "seconds"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and {"model", "optimizer", "rng", "config"} <= set(last)
    assert "code_dim: 64" in last["config"]
    for figure in RUN_FILES[4:]:
        with Image.open(run_dir / figure) as image:
            assert image.width > 100 and image.height > 100


def test_multirun_runs_one_job_per_value(tmp_path):
    result = run_cli(
        ["train", "-m", "model.code_dim=4,8", *TINY, "trainer.epochs=1", "trainer.figures=false"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    code_dims = sorted(json.loads((sweep / job / "metrics.json").read_text())["code_dim"] for job in ("0", "1"))
    assert code_dims == [4, 8]


def test_help_lists_commands_and_groups(tmp_path, capsys):
    assert run_main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert run_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for group in ("model:", "optimizer:", "schedule:", "sparsity:", "noise:", "data:", "loss:"):
        assert group in out
    assert "code_dim" in out


def test_top_level_help_does_not_import_torch():
    code = (
        "import sys; from autoenc_cli.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, 'hydra' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip().endswith("False False")


def test_cfg_job_prints_composed_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "--cfg", "job", "model.code_dim=32"]) == 0
    out = capsys.readouterr().out
    assert "code_dim: 32" in out and "optimizer:" in out
    assert not (tmp_path / "outputs").exists()


def test_user_config_dir_adds_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "wide.yaml").write_text("name: fc\ncode_dim: 7\nencoder: [{width: 16}]\n")
    assert (
        run_main(
            [
                "train",
                "--config-dir",
                str(tmp_path / "mine"),
                "model=wide",
                *TINY,
                "trainer.epochs=1",
                "trainer.figures=false",
            ]
        )
        == 0
    )
    assert read_metrics(only_run_dir(tmp_path))["code_dim"] == 7


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=nope"], "model=nope is not an option; choose one of conv, conv_deconv, conv_vae, fc, sparse_fc, vae"),
        (["model.code_dimm=3"], "model.code_dimm"),
        (["optimizer.lr=abc"], "optimizer.lr='abc' has the wrong type; expected float"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed: must be > 0"),
        (["trainer.epochs=-5"], "trainer.epochs=-5 is not allowed: must be >= 1"),
        (["model.decoder=[{width:700}]"], "model.decoder[0].width=700 is not allowed"),
        (["data=mnist", "data.root=missing_dir"], "/missing_dir' does not exist"),
        (["model.code_dim=[1"], "malformed override"),
    ],
)
def test_user_mistakes_give_one_line_and_leave_no_run_folder(tmp_path, monkeypatch, capsys, overrides, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert run_main(["train", *TINY, *overrides]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("autoenc: error: ") and expected in lines[0], captured.err
    assert not list((tmp_path / "outputs" / "runs").glob("*")) if (tmp_path / "outputs").exists() else True


def test_a_bad_value_in_any_sweep_job_fails_before_the_first_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", "optimizer.lr=1e-3,-1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "sweep job [optimizer.lr=-1" in err and "must be > 0" in err
    assert not (tmp_path / "outputs").exists()


def test_a_glob_sweep_checks_every_job_first_too(tmp_path, monkeypatch, capsys):
    # glob(...) lists the group's options through Hydra's config loader; the check must see its jobs too:
    # the first job (tutorial_2d) is fine, the second (tutorial_conv, model=conv) has no model.tied.
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", *TINY, "experiment=glob(tutorial_*)", "model.tied=true"]) == 2
    err = capsys.readouterr().err
    assert "experiment=tutorial_conv model.tied=" in err and "unknown key 'model.tied'" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (
            ["model=sparse_fc", "sparsity=topk", "k=100,16"],
            "sparsity.topk.k=100 is not allowed: must be <= the code size",
        ),
        (["sparsity=kl", "model.code_activation=sigmoid,relu"], "model.code_activation='relu' is not allowed"),
        (["loss=bce", "model.output_activation=sigmoid,linear"], "loss.name='bce' is not allowed: needs a sigmoid"),
        (["model=sparse_fc,conv", "schedule=greedy", "schedule.untie=false"], "schedule.name='greedy' is not allowed"),
        (["data=npz", f"data.path={SAMPLE_NPZ},missing.npz"], "data.path='missing.npz' is not a file"),
    ],
)
def test_a_rule_across_groups_broken_by_any_sweep_job_refuses_the_whole_sweep(
    tmp_path, monkeypatch, capsys, sweep, expected
):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", "experiment=smoke", *sweep]) == 2
    err = capsys.readouterr().err
    assert "sweep job [" in err and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()  # no job started


def test_subprocess_error_has_no_traceback(tmp_path):
    result = run_cli(["train", "optimizer.lr=-1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "autoenc: error: optimizer.lr=-1.0 is not allowed: must be > 0"
    assert "Traceback" not in result.stdout + result.stderr


def test_unknown_command(capsys):
    assert run_main(["fly"]) == 2
    assert "unknown command 'fly'; choose one of train" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "trainer.device=cuda", *TINY, "trainer.figures=false"]) == 0
    assert read_metrics(only_run_dir(tmp_path))["device"].startswith("cuda")


def test_back_to_back_runs_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert (
            run_main(["train", *TINY, "trainer.epochs=1", "trainer.figures=false", "trainer.pca_baseline=false"]) == 0
        )
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2 and all((run / "metrics.json").is_file() for run in runs)


def test_denoising_conv_run_writes_the_denoising_figure_and_psnr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_conv = "model.encoder=[{channels: 4, kernel: 3, stride: 2, padding: 1, norm: batch}]"  # fast
    assert run_main(["train", *TINY, "model=conv", small_conv, "noise=mask", "noise.rate=0.5"]) == 0
    run_dir = only_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["val_psnr_noisy"] > 0 and metrics["val_psnr_denoised"] > 0 and metrics["code_dim"] == 128
    with Image.open(run_dir / "figures" / "denoising.png") as image:
        assert image.height > 100


def test_switching_data_needs_no_model_edits(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (60, 3, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=images, labels=np.arange(60) % 4)
    for model in ("conv", "conv_deconv", "fc"):
        overrides = [
            f"data.path={tmp_path / 'mine.npz'}",
            f"model={model}",
            "model.encoder=[{channels: 4, kernel: 3, stride: 2}]",
        ]
        if model == "fc":
            overrides[-1] = "model.code_dim=16"
        assert run_main(["train", "data=npz", *overrides, "trainer.epochs=1", f"output_root={model}"]) == 0
        (run_dir,) = (tmp_path / model / "runs").iterdir()
        assert read_metrics(run_dir)["status"] == "completed"
        assert (run_dir / "figures" / "dictionary.png").is_file()
