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

import pytest
import torch

from autoenc_cli.training.checkpoint import load_checkpoint

from conftest import TINY, only_run_dir, run_cli, run_main

# A wider model so an epoch lasts long enough to be interrupted in the middle.
SLOW = ["data.limit=2000", "model.encoder=[{width: 512}]", "trainer.epochs=4", "trainer.figures=false"]


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


def start_training(cwd: Path, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, "-m", "autoenc_cli", "train", *SLOW],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def signal_after_epochs(process: subprocess.Popen, root: Path, epochs: int, signum: int) -> Path | None:
    """Wait until the run has finished ``epochs`` epochs, then signal it a moment into the next one."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        runs = list((root / "outputs" / "runs").glob("*"))
        if runs and history_rows(runs[0]) >= epochs:
            time.sleep(0.1)
            process.send_signal(signum)
            return runs[0]
        time.sleep(0.02)
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The SLOW run trained without interruption, in a fresh process: what every interrupted one must equal."""
    root = tmp_path_factory.mktemp("uninterrupted")
    assert run_cli(["train", *SLOW], cwd=root).returncode == 0
    return only_run_dir(root)


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    killed_root = tmp_path / "killed"
    killed_root.mkdir()
    reference = uninterrupted

    process = start_training(killed_root)
    run_dir = signal_after_epochs(process, killed_root, 2, signal.SIGKILL)
    process.wait()
    assert run_dir is not None and process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert history_rows(run_dir) < 4 and not (run_dir / "metrics.json").is_file()

    resumed = run_cli(["train", f"resume={run_dir}"], cwd=killed_root)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after 2 epochs" in resumed.stdout or "resuming after" in resumed.stdout
    assert_same_run(reference, run_dir)
    assert history_rows(run_dir) == 4


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
    assert "nowhere' does not exist; give a run folder or a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert run_main(["train", f"resume={tmp_path / 'empty'}"]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert not any((tmp_path / "empty").iterdir())  # the refusal wrote nothing there
    assert run_main(["train", *TINY, "trainer.epochs=1", "trainer.figures=false"]) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_main(["train", f"resume={run_dir}", "model.code_dim=3"]) == 2
    assert "'model.code_dim=3' would change model.code_dim (saved: 64); only trainer.epochs" in capsys.readouterr().err
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert run_main(["train", f"resume={run_dir}"]) == 2
    assert "is not a readable autoenc checkpoint" in capsys.readouterr().err


def test_sigterm_finishes_the_step_saves_and_resumes_bit_for_bit(tmp_path, uninterrupted):
    stopped_root = tmp_path / "stopped"
    stopped_root.mkdir()
    process = start_training(stopped_root, stderr=subprocess.PIPE)
    assert signal_after_epochs(process, stopped_root, 1, signal.SIGTERM) is not None
    stderr = process.communicate(timeout=300)[1]
    run_dir = only_run_dir(stopped_root)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and f"resume={run_dir}" in lines[0]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step_in_epoch"] > 0  # saved in the middle of an epoch
    assert run_cli(["train", f"resume={run_dir}"], cwd=stopped_root).returncode == 0
    assert_same_run(uninterrupted, run_dir)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    import pytest

    from autoenc_cli.artifacts.run_folder import RunFolder, RunFolderWriter
    from autoenc_cli.build import build_parts
    from autoenc_cli.errors import TrainingDiverged
    from autoenc_cli.schema.resolve import resolve
    from autoenc_cli.training.loop import Trainer

    from conftest import compose_config

    def poisoned_trainer(folder, after_calls):
        parts = build_parts(resolve(compose_config([*TINY, "trainer.epochs=3", "trainer.figures=false"])))
        reconstruction, calls = parts.objective.reconstruction, []

        def poisoned(output, target):
            calls.append(1)
            loss = reconstruction(output, target)
            return loss * float("nan") if len(calls) > after_calls else loss

        parts.objective.reconstruction = poisoned
        return Trainer(parts, [RunFolderWriter(folder, "config: {}")])

    folder = RunFolder(tmp_path)
    # 10 steps + 1 validation batch per epoch: step 2 of epoch 2 goes bad.
    with pytest.raises(TrainingDiverged, match=r"became nan in epoch 2, by step 2; checkpoints/last.pt keeps .* \(1\)"):
        poisoned_trainer(folder, 12).fit()
    assert folder.read_metrics()["status"] == "failed"
    good = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert good["epoch"] == 1 and all(torch.isfinite(tensor).all() for tensor in good["model"].values())
    early = RunFolder(tmp_path / "early")  # diverging in the first epoch names no checkpoint that is not there
    with pytest.raises(TrainingDiverged, match=r"by step 2; no epoch had finished, so no checkpoint was written"):
        poisoned_trainer(early, 1).fit()
    assert not early.layout.checkpoints.exists() and early.read_metrics()["status"] == "failed"


def test_disk_full_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import pytest

    from autoenc_cli import io
    from autoenc_cli.training import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1, "weights": torch.ones(1000)})
    before = path.read_bytes()

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full_disk)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(1000)})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    assert checkpoint.load_checkpoint(path)["epoch"] == 1


def test_a_failing_sweep_job_does_not_stop_the_others_and_resume_finishes_the_sweep(tmp_path, monkeypatch, capsys):
    import csv

    import numpy as np

    monkeypatch.chdir(tmp_path)
    good, bad = tmp_path / "images.npz", tmp_path / "bad.npz"
    sweep = ["train", "-m", "data=npz", f"data.path={good},{bad}", "trainer.epochs=1", "trainer.figures=false"]
    np.savez(good, images=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    # A file whose header passes the config check but whose pixels fail at load time, in job 1.
    np.savez(bad, images=np.full((40, 8, 8), 255.0))
    assert run_main(sweep) == 2
    err = capsys.readouterr().err
    assert "1 of 2 sweep jobs did not complete: 1 (" in err and "resume=" in err
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").iterdir()
    with open(sweep_dir / "summary.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["completed", "failed"]
    assert "float images must lie in [0, 1]" in json.loads((sweep_dir / "1" / "metrics.json").read_text())["error"]
    first_job_metrics = (sweep_dir / "0" / "metrics.json").read_text()
    np.savez(bad, images=np.zeros((40, 8, 8), dtype=np.uint8))  # fix the cause
    assert run_main([*sweep, f"resume={sweep_dir}"]) == 0
    out = capsys.readouterr().out
    assert "already completed, skipped" in out
    assert (sweep_dir / "0" / "metrics.json").read_text() == first_job_metrics  # not retrained
    assert json.loads((sweep_dir / "1" / "metrics.json").read_text())["status"] == "completed"


# A VAE too: its codes are samples (the torch generator's state resumes) and its KL warm-up counts steps.
VAE_WARMING_UP = [
    "model=vae",
    "loss=bce",
    "model.encoder=[{width:32,activation:relu}]",
    "model.kl_warmup_steps=40",
    "trainer.nll_samples=5",
    "trainer.pca_baseline=false",
]


# An augmented run: its random flips and shifts come from the run's noise generator, which the checkpoint holds.
AUGMENTED = ["augment=flip_shift"]


@pytest.mark.parametrize("model", [[], VAE_WARMING_UP, AUGMENTED], ids=["fc", "vae", "augmented"])
def test_resume_with_more_epochs_extends_a_finished_run_exactly(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = [*TINY, "trainer.figures=false", *model]
    assert run_main(["train", *quick, "trainer.epochs=4", "output_root=straight"]) == 0
    assert run_main(["train", *quick, "trainer.epochs=2", "output_root=extended"]) == 0
    (extended,) = (tmp_path / "extended" / "runs").iterdir()
    assert run_main(["train", f"resume={extended}", "trainer.epochs=4"]) == 0
    (straight,) = (tmp_path / "straight" / "runs").iterdir()
    assert_same_run(straight, extended)
    assert "epochs: 4" in load_checkpoint(extended / "checkpoints" / "last.pt")["config"]


def test_a_second_ctrl_c_stops_at_once_also_when_the_first_came_while_training():
    """Training, then writing the results, each listen for signals; a stop asked for in the first makes the
    next signal, in the second, stop at once (as the results half of a run would otherwise wait)."""
    import types

    import pytest

    from autoenc_cli.job import TrainersStop, stop_on_signals

    trainer = types.SimpleNamespace(stop_requested=None)
    with stop_on_signals(TrainersStop(trainer)) as received:
        os.kill(os.getpid(), signal.SIGINT)
    assert trainer.stop_requested == "SIGINT" and received == ["SIGINT"]
    with pytest.raises(KeyboardInterrupt), stop_on_signals(TrainersStop(trainer)):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
