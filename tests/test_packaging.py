"""A non-editable install (a wheel) carries the configs and the embedded data set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("autoenc_cli", "configs", "hydra_plugins"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("autoenc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "autoenc_cli/configs/train.yaml" in names and "autoenc_cli/configs/model/fc.yaml" in names
    assert "autoenc_cli/data/mnist_5k.npz" in names and "autoenc_cli/data/MNIST_5K_README.md" in names
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def test_wheel_install_finds_configs_and_data_from_any_folder(wheel_install, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(wheel_install)}
    where = subprocess.run(
        [sys.executable, "-c", "import autoenc_cli, autoenc_cli.configs; print(autoenc_cli.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(wheel_install))
    run = subprocess.run(
        [sys.executable, "-m", "autoenc_cli", "train", "data.limit=200", "trainer.epochs=1", "trainer.figures=false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "outputs" / "runs").glob("*/metrics.json"))) == 1


def test_wheel_install_ships_the_stacked_launcher_plugin(wheel_install, tmp_path):
    """Hydra finds launchers by scanning the hydra_plugins namespace: the wheel must put ours there."""
    env = {**os.environ, "PYTHONPATH": str(wheel_install)}
    assert (wheel_install / "hydra_plugins" / "autoenc_stacked_launcher" / "stacked_launcher.py").is_file()
    sweep = ["-m", "hydra/launcher=stacked", "seed=0,1", "data.limit=200", "trainer.epochs=1", "trainer.figures=false"]
    run = subprocess.run(
        [sys.executable, "-m", "autoenc_cli", "train", *sweep], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "stack A: #0 #1 as one model" in run.stdout
    assert len(list((tmp_path / "outputs" / "sweeps").glob("*/*/metrics.json"))) == 2
