"""Scale-out paths on a CPU: mixed precision, torch.compile, and DDP under torchrun with gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoenc_cli.build import build_parts
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config, read_metrics, with_tiny_defaults

QUICK = [*TINY, "trainer.figures=false"]


def fit(overrides):
    trainer = Trainer(build_parts(resolve(compose_config([*QUICK, *overrides]))))
    return trainer, trainer.fit()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(precision):
    _, reference = fit(["trainer.precision=fp32"])
    trainer, result = fit([f"trainer.precision={precision}"])
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].val_loss == pytest.approx(reference.history[-1].val_loss, rel=0.05)
    state = trainer.state_dict()
    assert bool(state["scaler"]) == (precision == "fp16")  # fp16 keeps its gradient scaler in checkpoints


def test_compiled_model_matches_eager():
    _, eager = fit(["trainer.epochs=1"])
    trainer, compiled = fit(["trainer.epochs=1", "trainer.compile=true"])
    assert trainer.forward_model is not trainer.parts.model
    assert compiled.history[-1].val_loss == pytest.approx(eager.history[-1].val_loss, rel=1e-4)


def _train(cwd: Path, launcher: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    environment = {
        key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "RANK", "WORLD_SIZE")
    }
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [*launcher, "-m", "autoenc_cli", "train", *with_tiny_defaults(overrides)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ddp_two_processes_match_one_process(tmp_path):
    overrides = [*QUICK, "trainer.epochs=3", "data.batch_size=32"]
    single = _train(tmp_path, [sys.executable], [*overrides, "output_root=single"])
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = _train(tmp_path, torchrun, [*overrides, "output_root=double"])
    assert double.returncode == 0, double.stderr
    (single_run,), (double_run,) = (tmp_path / "single" / "runs").iterdir(), (tmp_path / "double" / "runs").iterdir()
    a, b = read_metrics(single_run), read_metrics(double_run)
    for key in ("val_loss", "val_mse", "train_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert b["epochs"] == 3 and b["status"] == "completed"
    weights_a = torch.load(single_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    weights_b = torch.load(double_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(weights_a[key], weights_b[key], atol=1e-5) for key in weights_a)
    assert double.stdout.count("final metrics") == 1  # rank 0 alone reports and writes
