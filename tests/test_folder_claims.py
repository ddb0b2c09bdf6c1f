"""One process per run or sweep folder, refusals that leave a folder byte for byte as it was, and
interruptions that leave either nothing or a run that resume= continues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoenc_cli.folder_lock import FolderBusy, claim_folder
from autoenc_cli.training.loop import Trainer

from conftest import TINY, read_metrics, run_main

QUICK = [*TINY, "trainer.figures=false", "trainer.pca_baseline=false"]  # 2 epochs

HOLD = """
import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def held_elsewhere():
    """Hold a folder's lock in another process, as a running autoenc command would."""
    holders = []

    def hold(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout.readline().strip() == "held"
        holders.append(holder)

    yield hold
    for holder in holders:
        holder.communicate(input="")


def contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    assert run_main(["train", *QUICK, f"hydra.run.dir={root / 'run'}"]) == 0
    return root / "run"


def test_a_folder_another_process_writes_is_refused_and_left_alone(tmp_path, monkeypatch, held_elsewhere, capsys):
    monkeypatch.chdir(tmp_path)
    held_elsewhere(tmp_path / "run")
    held_elsewhere(tmp_path / "sweep")
    for argv in (
        ["train", *QUICK, "hydra.run.dir=run"],
        ["train", "-m", *QUICK, "seed=1,2", "hydra.sweep.dir=sweep"],
    ):
        assert run_main(argv) == 2
        assert "is in use by another autoenc process" in one_error_line(capsys)
    assert not any((tmp_path / "run").iterdir()) and not any((tmp_path / "sweep").iterdir())


def test_two_resumes_of_one_run_one_is_refused(finished_run, held_elsewhere, capsys):
    before = contents(finished_run)
    held_elsewhere(finished_run)
    assert run_main(["train", f"resume={finished_run}", "trainer.epochs=3"]) == 2
    assert "is in use by another autoenc process" in one_error_line(capsys)
    assert contents(finished_run) == before


def test_a_claim_nests_in_its_process_and_a_second_process_is_refused(tmp_path):
    claim = claim_folder(tmp_path / "a" / "b")
    assert claim.created == [tmp_path / "a", tmp_path / "a" / "b"]
    assert claim_folder(tmp_path / "a" / "b") is claim  # the same process: nested
    claim.release()
    probe = f"from autoenc_cli.folder_lock import claim_folder; claim_folder({str(tmp_path / 'a' / 'b')!r})"
    refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert refused.returncode != 0 and FolderBusy.__name__ in refused.stderr
    claim.release()
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0  # released: free again
    assert claim.undo() and not (tmp_path / "a").exists()  # it made both folders, and only they go


@pytest.mark.parametrize(
    "target, expected",
    [
        ("study", "is a tune study; continue it with: autoenc tune resume="),
        ("sweep", "is a sweep; finish it with the command that started it, with -m and resume="),
        ("data.npz", "is a file but not a checkpoint (.pt)"),
        ("empty", "has no checkpoint"),
    ],
)
def test_a_resume_that_cannot_go_on_leaves_the_folder_byte_for_byte(tmp_path, monkeypatch, capsys, target, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study").mkdir(), (tmp_path / "study" / "study.db").write_bytes(b"sqlite")
    (tmp_path / "sweep").mkdir(), (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "data.npz").write_bytes(b"not a checkpoint"), (tmp_path / "empty").mkdir()
    before = contents(tmp_path)
    assert run_main(["train", f"resume={target}"]) == 2
    assert expected in one_error_line(capsys)
    assert contents(tmp_path) == before and not (tmp_path / "empty" / ".hydra").exists()


def test_a_resume_refused_after_hydra_started_puts_the_folder_back(tmp_path, monkeypatch, capsys):
    """The data changed since the run trained: found once the job loads it, after Hydra wrote its record of
    the resume and its log line; both are taken back."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "data.npz", images=images)
    assert run_main(["train", *QUICK, "data=npz", "data.path=data.npz", "hydra.run.dir=run"]) == 0
    np.savez(tmp_path / "data.npz", images=images[::-1].copy())
    before = contents(tmp_path / "run")
    assert run_main(["train", "resume=run", "trainer.epochs=3"]) == 2
    assert "changed since the run trained" in one_error_line(capsys)
    assert contents(tmp_path / "run") == before and not (tmp_path / "run" / ".hydra" / "resumed").exists()


def interrupt_at_epoch(monkeypatch, epoch: int, error: BaseException = KeyboardInterrupt()) -> None:
    """Raise ``error`` (by default KeyboardInterrupt: a second Ctrl-C) as epoch ``epoch`` starts training."""
    original = Trainer.train_epoch

    def train_epoch(self: Trainer) -> float:
        if len(self.result.history) + 1 == epoch:
            raise error
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_a_second_ctrl_c_after_a_checkpoint_leaves_a_run_that_says_so_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_at_epoch(monkeypatch, 2)
    assert run_main(["train", *QUICK, "trainer.epochs=3", "hydra.run.dir=run"]) == 130
    assert "second Ctrl-C" in one_error_line(capsys)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted" and "second" in metrics["stopped"]
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 2  # header + epoch 1
    monkeypatch.undo()  # the training and the working folder as they were
    assert run_main(["train", f"resume={tmp_path / 'run'}"]) == 0
    assert read_metrics(tmp_path / "run")["status"] == "completed" and read_metrics(tmp_path / "run")["epochs"] == 3


def test_a_second_ctrl_c_before_any_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_at_epoch(monkeypatch, 1)
    assert run_main(["train", *QUICK]) == 130
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is emptied of what the run wrote, and kept
    assert run_main(["train", *QUICK, "hydra.run.dir=mine"]) == 130
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_ctrl_c_while_hydra_starts_the_job_leaves_nothing(tmp_path, monkeypatch):
    import autoenc_cli.train as train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "job", interrupted)
    assert run_main(["train", *QUICK]) == 130
    assert not (tmp_path / "outputs").exists()


def test_train_log_holds_each_epoch_and_the_reason_a_run_stopped(finished_run, tmp_path, monkeypatch):
    log = (finished_run / "train.log").read_text()
    assert "epoch 1 (train): train_loss" in log and "val_mse" in log
    from autoenc_cli.errors import TrainingDiverged

    monkeypatch.chdir(tmp_path)
    interrupt_at_epoch(monkeypatch, 2, TrainingDiverged("the training loss became nan in epoch 2"))
    assert run_main(["train", *QUICK, "hydra.run.dir=diverged"]) == 2
    assert "stopped: the training loss became nan in epoch 2" in (tmp_path / "diverged" / "train.log").read_text()
    interrupt_at_epoch(monkeypatch, 2, RuntimeError("a bug"))
    with pytest.raises(RuntimeError):
        run_main(["train", *QUICK, "hydra.run.dir=bug"])
    log = (tmp_path / "bug" / "train.log").read_text()
    assert "failed" in log and "RuntimeError: a bug" in log  # with its traceback


def test_a_run_that_learned_nothing_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "optimizer.lr=1e10", "hydra.run.dir=run"]) == 0
    notes = json.loads((tmp_path / "run" / "metrics.json").read_text())["notes"]
    assert any("codes exploded" in note and "optimizer.lr=1e+10 is likely too high" in note for note in notes)
    assert "codes exploded" in capsys.readouterr().out


def test_an_edited_hydra_config_is_named_on_resume(finished_run, capsys):
    config = finished_run / ".hydra" / "config.yaml"
    original = config.read_text()
    try:
        config.write_text(original.replace("code_dim: 64", "code_dim: 8"))
        assert run_main(["train", f"resume={finished_run}", "trainer.epochs=3"]) == 0
        assert "was edited after the run started; a resume trains with the run's own config" in capsys.readouterr().out
    finally:
        config.write_text(original)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["experiment=smoke", "experiment=deep_fc"], "experiment is given twice (experiment=smoke and experiment=deep_fc)"),
        (["trainer.epochs=1", "trainer.epochs=5"], "trainer.epochs is given twice"),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *argv]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "outputs").exists()


def test_paths_with_spaces_and_non_ascii_letters_are_taken_as_typed(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mes données (v2)"
    folder.mkdir()
    np.savez(folder / "chiffres, été.npz", images=np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32))
    argv = ["train", *QUICK, "data=npz", f"data.path={folder / 'chiffres, été.npz'}", "output_root=sorties é"]
    assert run_main(argv) == 0
    (run,) = (tmp_path / "sorties é" / "runs").iterdir()
    assert read_metrics(run)["status"] == "completed"
