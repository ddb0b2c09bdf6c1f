"""Resuming: a run killed mid-epoch and resumed ends bit-for-bit where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import TINY, only_run_dir, run_cli, run_main

from autoenc_cli.training.checkpoint import load_checkpoint

# A wider model so an epoch lasts long enough to be interrupted in the middle.
SLOW = ["data.limit=2000", "model.encoder=[{width: 512}]", "trainer.epochs=5", "trainer.figures=false"]


def history_rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "history.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def final_state(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"], metrics


def assert_same_run(first: Path, second: Path) -> None:
    (weights_a, metrics_a), (weights_b, metrics_b) = final_state(first), final_state(second)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
    for key in ("train_loss", "val_loss", "val_mse", "l0", "epochs", "best_epoch"):
        assert metrics_a[key] == metrics_b[key], key


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    reference_root, killed_root = tmp_path / "reference", tmp_path / "killed"
    reference_root.mkdir(), killed_root.mkdir()
    assert run_cli(["train", *SLOW], cwd=reference_root).returncode == 0
    reference = only_run_dir(reference_root)

    environment = {**os.environ}
    environment.pop("HYDRA_FULL_ERROR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "autoenc_cli", "train", *SLOW],
        cwd=killed_root,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and process.poll() is None:
        runs = list((killed_root / "outputs" / "runs").glob("*"))
        if runs and history_rows(runs[0]) >= 2:
            run_dir = runs[0]
            time.sleep(0.15)  # into the next epoch
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert run_dir is not None and process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert history_rows(run_dir) < 5 and not (run_dir / "metrics.json").is_file()

    resumed = run_cli(["train", f"resume={run_dir}"], cwd=killed_root)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    assert_same_run(reference, run_dir)
    assert history_rows(run_dir) == 5


def test_resume_from_a_stage_boundary_continues_in_the_right_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    deep = [*TINY, "experiment=deep_fc_2d", "schedule.epochs_per_stage=1", "trainer.epochs=2", "trainer.figures=false"]
    assert run_main(["train", *deep]) == 0
    run_dir = only_run_dir(tmp_path)
    reference = tmp_path / "reference"
    shutil.copytree(run_dir, reference)
    stage2 = load_checkpoint(run_dir / "checkpoints" / "stage2.pt")
    assert stage2["phase_index"] == 1 and stage2["epoch"] == 2
    # The tied state is part of the checkpoint's structure: stage checkpoints hold no decoder weights.
    assert not any(key.startswith("decoder") and key.endswith("weight") for key in stage2["model"])
    assert run_main(["train", f"resume={run_dir / 'checkpoints' / 'stage2.pt'}"]) == 0
    assert_same_run(reference, run_dir)
    stages = [line.split(",")[0] for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["stage1", "stage2", "stage3", "stage4", "finetune", "finetune"]


def test_resume_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", f"resume={tmp_path / 'nowhere'}"]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert run_main(["train", *TINY, "trainer.epochs=1", "trainer.figures=false"]) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_main(["train", f"resume={run_dir}", "trainer.epochs=3"]) == 2
    assert "drop the other overrides: trainer.epochs=3" in capsys.readouterr().err
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert run_main(["train", f"resume={run_dir}"]) == 2
    assert "is not a readable autoenc checkpoint" in capsys.readouterr().err
