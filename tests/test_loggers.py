"""The logger group: what each tracker holds is read back with the tracker's own reader (TensorBoard's event
accumulator, the MLflow client on the SQLite store, W&B's record protocol), after plain runs, sweeps, and resumes
after every kind of interruption (Ctrl-C, a second Ctrl-C, a hard kill before or right after a checkpoint)."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from autoenc_cli.artifacts.run_folder import RunFolderWriter
from autoenc_cli.loggers.run_loggers import epoch_metrics
from autoenc_cli.training.checkpoint import load_checkpoint
from autoenc_cli.training.records import EpochRecord

from conftest import TINY, only_run_dir, read_metrics, run_main

QUICK = [*TINY, "trainer.pca_baseline=false"]


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def expected_loss_steps(run_dir: Path) -> list[int]:
    """The global steps a run reports its training loss at: every log_every steps within each epoch."""
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    epochs = len(history(run_dir))
    steps_per_epoch = state["global_step"] // epochs
    log_every = 2  # TINY's trainer.log_every
    return [
        epoch * steps_per_epoch + step
        for epoch in range(epochs)
        for step in range(log_every, steps_per_epoch + 1, log_every)
    ]


def event_accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_holds_losses_metrics_figures_and_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "model=sparse_fc", "sparsity=topk", "logger=tensorboard",
                     "logger.tensorboard.figures_every=1"]) == 0  # fmt: skip
    run_dir = only_run_dir(tmp_path)
    events = event_accumulator(run_dir)
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == expected_loss_steps(run_dir)
    rows = history(run_dir)
    for tag, column in (("val/mse", "val_mse"), ("val/l0", "l0"), ("val/dead_fraction", "dead_fraction"),
                        ("val/fvu", "val_fvu"), ("lr", "lr"), ("train/epoch_loss", "train_loss")):  # fmt: skip
        assert [event.value for event in events.Scalars(tag)] == pytest.approx([float(row[column]) for row in rows])
    assert [event.value for event in events.Scalars("val/l0")] == [16.0, 16.0]  # top-k 16: exactly 16 active
    # Figures every epoch while training (at each epoch's last step), and the run folder's set at the end.
    steps = [event.step for event in events.Scalars("val/mse")]
    reconstructions = events.Images("figures/reconstructions")
    assert [image.step for image in reconstructions] == [*steps, steps[-1]]
    assert reconstructions[0].width > 100 and reconstructions[0].height > 50
    assert {"figures/dictionary", "figures/latent_map", "figures/loss_curve"} <= set(events.Tags()["images"])
    assert events.Scalars("summary/val_mse")[0].value == pytest.approx(read_metrics(run_dir)["val_mse"])
    # The config in TensorBoard's HParams view, with the metrics it compares runs by.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    parsed = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    start = next(data.session_start_info for data in parsed.values() if data.HasField("session_start_info"))
    assert start.hparams["model.code_dim"].number_value == 64
    assert start.hparams["sparsity.topk.k"].number_value == 16
    assert start.hparams["model.name"].string_value == "sparse_fc"
    experiment = next(data.experiment for data in parsed.values() if data.HasField("experiment"))
    assert "val/mse" in {metric.name.tag for metric in experiment.metric_infos}
    assert any(data.HasField("session_end_info") for data in parsed.values())


def crash_before_the_second_checkpoint(monkeypatch) -> None:
    """The process dies after epoch 2 was logged but before its checkpoint was written."""
    save = RunFolderWriter.on_epoch_end

    def crash(self, event):
        if event.record.epoch == 2:
            raise RuntimeError("power cut")
        save(self, event)

    monkeypatch.setattr(RunFolderWriter, "on_epoch_end", crash)


def test_a_run_resumed_after_a_crash_continues_the_same_logged_runs_without_duplicate_steps(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    argv = ["train", *QUICK, "trainer.epochs=3", "trainer.figures=false", "logger=[tensorboard,mlflow]"]
    with monkeypatch.context() as patch:
        crash_before_the_second_checkpoint(patch)
        with pytest.raises(RuntimeError, match="power cut"):
            run_main(argv)
    run_dir = only_run_dir(tmp_path)
    first_ids = load_checkpoint(run_dir / "checkpoints" / "last.pt")["loggers"]
    client = MlflowClient(tracking_uri=first_ids["mlflow"]["tracking_uri"])
    assert client.get_run(first_ids["mlflow"]["run_id"]).info.status == "FAILED"
    logged_before = [metric.step for metric in client.get_metric_history(first_ids["mlflow"]["run_id"], "val/mse")]
    assert len(logged_before) == 2  # epoch 2 reached the trackers, not the checkpoint

    assert run_main(["train", f"resume={run_dir}"]) == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["loggers"] == first_ids  # the same logged runs, continued
    expected = expected_loss_steps(run_dir)
    events = event_accumulator(run_dir)
    assert [event.step for event in events.Scalars("train/loss")] == expected  # the crashed attempt's tail purged
    assert len(events.Scalars("val/mse")) == 3
    run_id = first_ids["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("autoenc").experiment_id])) == 1
    loss_steps = [metric.step for metric in client.get_metric_history(run_id, "train/loss")]
    assert sorted(loss_steps) == expected  # each step once
    val_mse = sorted(client.get_metric_history(run_id, "val/mse"), key=lambda metric: metric.step)
    assert [metric.value for metric in val_mse] == pytest.approx([float(row["val_mse"]) for row in history(run_dir)])


def train_until_signalled(cwd: Path, argv: list[str], where: str) -> subprocess.CompletedProcess:
    """``autoenc train ARGV`` in a fresh interpreter that signals itself at ``where`` (tests/signal_itself.py)."""
    # As from a shell: without this process's W&B service (WANDB_SERVICE), which would outlive the kill.
    dropped = ("HYDRA_FULL_ERROR", "WANDB_SERVICE")
    environment = {name: value for name, value in os.environ.items() if name not in dropped}
    command = [sys.executable, str(Path(__file__).with_name("signal_itself.py")), where, "train", *argv]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def signal_itself_at(monkeypatch, where: str) -> None:
    """The same signal in this process (a Ctrl-C needs no fresh interpreter)."""
    from signal_itself import hooks

    for attribute, hook in hooks(where).items():
        monkeypatch.setattr(RunFolderWriter, attribute, hook)


# Two epochs of 10 steps; the training loss reported every 2 steps.
LOGGED = [*QUICK, "trainer.figures=false", "logger=[tensorboard,mlflow,wandb]"]


@pytest.fixture(scope="module")
def uninterrupted_losses(tmp_path_factory) -> list[tuple[int, float]]:
    """The training losses (step, value) the run logs when nothing stops it."""
    from conftest import train_in

    root = tmp_path_factory.mktemp("uninterrupted")
    train_in(root, ["train", *QUICK, "trainer.figures=false", "logger=tensorboard"])
    return [(event.step, event.value) for event in event_accumulator(only_run_dir(root)).Scalars("train/loss")]


def logged_by_each_tracker(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """(step, value) of ``train/loss`` and ``val/mse`` as each tracker holds them, in step order, repeats kept."""
    from mlflow import MlflowClient

    tags = ("train/loss", "val/mse")
    events = event_accumulator(run_dir)
    tensorboard = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags}
    ids = load_checkpoint(run_dir / "checkpoints" / "last.pt")["loggers"]["mlflow"]
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    mlflow = {
        tag: sorted((metric.step, metric.value) for metric in client.get_metric_history(ids["run_id"], tag))
        for tag in tags
    }
    rows = wandb_history(run_dir)  # one offline run: the earlier attempts' folders are gone
    wandb = {tag: [(int(row["_step"]), float(row[tag])) for row in rows if tag in row] for tag in tags}
    return {"tensorboard": tensorboard, "mlflow": mlflow, "wandb": wandb}


@pytest.mark.parametrize(
    "signals",
    [
        pytest.param(["KILL:after_checkpoint:1"], id="sigkill-right-after-a-checkpoint"),
        # epoch 2 logged, not checkpointed; then the resumed run is killed in epoch 2 as well
        pytest.param(["KILL:before_checkpoint:2", "KILL:step:16"], id="sigkill-between-checkpoints-twice"),
        pytest.param(["INT:step:14"], id="ctrl-c"),
        pytest.param(["INT2:step:14"], id="double-ctrl-c"),
    ],
)
def test_every_tracker_holds_each_step_once_after_any_interruption(
    tmp_path, monkeypatch, uninterrupted_losses, signals
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for attempt, where in enumerate(signals):
        argv = LOGGED if attempt == 0 else [f"resume={only_run_dir(tmp_path)}"]
        if where.startswith("KILL"):
            killed = train_until_signalled(tmp_path, argv, where)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        else:
            with monkeypatch.context() as patch:
                signal_itself_at(patch, where)
                assert run_main(["train", *argv]) == 130
    run_dir = only_run_dir(tmp_path)
    assert run_main(["train", f"resume={run_dir}"]) == 0
    assert read_metrics(run_dir)["status"] == "completed"
    val_mse = [float(row["val_mse"]) for row in history(run_dir)]
    for tracker, logged in logged_by_each_tracker(run_dir).items():
        # Each step once, with the values the uninterrupted run logs (TensorBoard keeps float32).
        assert [step for step, _ in logged["train/loss"]] == [step for step, _ in uninterrupted_losses], tracker
        assert [value for _, value in logged["train/loss"]] == pytest.approx(
            [value for _, value in uninterrupted_losses], rel=1e-6
        ), tracker
        assert [step for step, _ in logged["val/mse"]] == [10, 20], tracker
        assert [value for _, value in logged["val/mse"]] == pytest.approx(val_mse, rel=1e-6), tracker


def test_mlflow_records_params_metrics_and_figures_in_a_sqlite_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "logger=mlflow", "logger.mlflow.experiment=digits"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outputs"]  # no ./mlruns in the working folder
    run_dir = only_run_dir(tmp_path)
    store = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # MLflow 3.0's list_artifacts reads the default store
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["autoenc.run_dir"] == str(run_dir.absolute())
    assert run.data.params["model.code_dim"] == "64" and run.data.params["optimizer.name"] == "adam"
    metrics = read_metrics(run_dir)
    assert run.data.metrics["summary/val_psnr"] == pytest.approx(metrics["val_psnr"])
    assert run.data.metrics["val/mse"] == pytest.approx(metrics["val_mse"])
    steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps == expected_loss_steps(run_dir)
    figures = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/reconstructions.png", "figures/dictionary.png", "figures/latent_map.png"} <= figures
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()  # beside the store


def test_mlflow_with_a_sqlite_uri_keeps_the_artifacts_beside_the_database(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    work, store = tmp_path / "work", tmp_path / "store" / "mlflow.db"
    work.mkdir(), store.parent.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{store}"
    argv = ["train", *QUICK, "trainer.epochs=1", "logger=mlflow", "logger.mlflow.figures_every=0"]
    assert run_main([*argv, f"logger.mlflow.tracking_uri={uri}"]) == 0
    assert sorted(path.name for path in work.iterdir()) == ["outputs"]  # no ./mlruns
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("autoenc")
    assert experiment.artifact_location == (store.parent / "mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    artifacts = store.parent / "mlartifacts" / run.info.run_id / "artifacts"
    assert run.info.artifact_uri == artifacts.as_uri()
    drawn = only_run_dir(work) / "figures" / "reconstructions.png"
    assert (artifacts / "figures" / "reconstructions.png").read_bytes() == drawn.read_bytes()


@pytest.mark.parametrize(
    "uri, folder",
    [
        ("sqlite:////data/runs/mlflow.db", "/data/runs"),  # beside the database file
        ("sqlite:///stores/mlflow.db", "WORK/stores"),  # a relative path: from the working folder
        ("sqlite://", "ROOT"),  # in memory: the output root
        ("postgresql+psycopg2://user@db/mlflow", "ROOT"),  # a database server
        ("http://127.0.0.1:5000", None),  # the server decides
        ("file:///data/mlruns", None),  # a file store keeps them in its own folder
        ("/data/mlruns", None),
    ],
)
def test_mlflow_artifacts_default_beside_the_store_never_in_the_working_folder(tmp_path, monkeypatch, uri, folder):
    from autoenc_cli.loggers.mlflow import default_artifact_location

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs"
    expected = folder and Path(folder.replace("WORK", str(tmp_path)).replace("ROOT", str(root))) / "mlartifacts"
    assert default_artifact_location(uri, root) == (expected.as_uri() if expected else None)


def test_a_sweep_is_one_mlflow_parent_run_with_a_child_per_job(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", *QUICK, "trainer.figures=false", "logger=mlflow", "model.code_dim=8,16"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("autoenc").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert sorted(run.data.params["model.code_dim"] for run in children) == ["16", "8"]
    assert parents[0].info.status == "FINISHED" and all(run.info.status == "FINISHED" for run in children)
    # The parent holds the comparison: the best job's val_mse and the sweep's table, report and figures.
    best = min(run.data.metrics["val/mse"] for run in children)
    assert parents[0].data.metrics["best/val_mse"] == pytest.approx(best)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")  # MLflow 3.0
    artifacts = {item.path for item in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.csv", "report.html", "figures"} <= artifacts


def wandb_records(run_dir: Path) -> list:
    """Every record of a W&B offline run, parsed with W&B's own protobuf schema. The .wandb file is a
    LevelDB-format log (a 7-byte W&B header, then 32 KiB blocks of checksummed, possibly split records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, records, pending, position = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    block = 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir: Path) -> list[dict[str, str]]:
    """The offline run's history rows in order, {key: JSON value}; a nested key joined with '/'
    (``figures/reconstructions/path``)."""
    return [
        {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        for record in wandb_records(run_dir)
        if record.WhichOneof("record_type") == "history"
    ]


def test_wandb_runs_offline_and_records_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert run_main(["train", *QUICK, "trainer.figures=false", "logger=wandb"]) == 0
    run_dir = only_run_dir(tmp_path)
    records = wandb_records(run_dir)
    rows = history(run_dir)
    logged = {
        key: [float(row[key]) for row in wandb_history(run_dir) if key in row] for key in ("val/mse", "train/loss")
    }
    assert logged["val/mse"] == pytest.approx([float(row["val_mse"]) for row in rows])
    assert len(logged["train/loss"]) == len(expected_loss_steps(run_dir))
    run = next(record.run for record in records if record.WhichOneof("record_type") == "run")
    assert run.project == "autoenc"
    assert run.run_id == load_checkpoint(run_dir / "checkpoints" / "last.pt")["loggers"]["wandb"]["id"]
    config = {item.key: item.value_json for item in run.config.update}
    assert config["model.code_dim"] == "64" and config["optimizer.name"] == '"adam"'


def test_a_resumed_wandb_run_logs_its_checkpoint_s_steps_and_figures_again_in_one_offline_run(tmp_path, monkeypatch):
    import copy

    from PIL import Image

    from autoenc_cli.loggers.base import RunContext
    from autoenc_cli.loggers.wandb import WandbConfig, WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def attempt(saved: dict, start_step: int) -> WandbLogger:
        context = RunContext(run_dir, "0123abcd", "run", {"seed": 0}, tmp_path, None, saved, start_step)
        logger = WandbLogger(WandbConfig(), context)
        logger.start()
        return logger

    def figure(shade: int) -> dict[str, Path]:  # a training figure, drawn in a scratch folder removed after logging
        path = tmp_path / "scratch" / "reconstructions.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("L", (8, 8), shade).save(path)
        return {"figures/reconstructions": path}

    first = attempt({}, 0)
    for step in (1, 2):
        first.log_metrics({"train/loss": 1.0 / step}, step)
    first.log_images(figure(50), 2)
    checkpoint = copy.deepcopy(first.kept)  # what a checkpoint at step 2 keeps
    first.log_metrics({"train/loss": 9.0}, 3)  # logged after the checkpoint: step 3 is trained again
    first.finish("interrupted")

    second = attempt(checkpoint, 2)
    second.log_metrics({"train/loss": 1.0 / 3}, 3)
    second.log_images(figure(200), 3)
    second.finish("completed")

    rows = wandb_history(run_dir)  # one offline run: the first attempt's folder is gone
    losses = [(int(row["_step"]), float(row["train/loss"])) for row in rows if "train/loss" in row]
    figure = "figures/reconstructions/path"
    figures = [(int(row["_step"]), json.loads(row[figure])) for row in rows if figure in row]
    assert losses == [(1, 1.0), (2, 0.5), (3, pytest.approx(1.0 / 3))]
    assert [step for step, _ in figures] == [2, 3]
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    for (_, path), shade in zip(figures, (50, 200)):
        with Image.open(folder / "files" / path) as image:
            assert image.getpixel((0, 0)) == shade


@pytest.mark.parametrize("logger, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_tracker_is_one_line_naming_its_extra(tmp_path, monkeypatch, capsys, logger, module):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert run_main(["train", *QUICK, f"logger={logger}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"autoenc: error: logger={logger} needs the '{logger}' extra ({module} is not installed): "
        f'python -m pip install -e ".[{logger}]" (in a clone) or python -m pip install "autoenc[{logger}]"'
    )
    assert not (tmp_path / "outputs").exists()


def test_bad_logger_options_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "logger=bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert run_main(["train", *QUICK, "logger=wandb", "logger.wandb.mode=cloud"]) == 2
    assert (
        "logger.wandb.mode='cloud' is not allowed: choose one of offline, online, disabled" in capsys.readouterr().err
    )
    assert run_main(["train", *QUICK, "logger=tensorboard", "logger.tensorboard.figures_every=-1"]) == 2
    assert "logger.tensorboard.figures_every" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_a_tracker_failing_mid_run_stops_logging_but_not_the_run(tmp_path, monkeypatch, capsys):
    from autoenc_cli.loggers.tensorboard import TensorBoardLogger

    def broken(self, metrics, step):
        raise OSError("disk quota exceeded")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(TensorBoardLogger, "log_metrics", broken)
    assert run_main(["train", *QUICK, "trainer.figures=false", "logger=tensorboard"]) == 0
    assert read_metrics(only_run_dir(tmp_path))["status"] == "completed"
    assert "logger=tensorboard stopped logging (OSError: disk quota exceeded)" in capsys.readouterr().out


def test_logging_figures_leaves_the_training_numbers_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", *QUICK, "trainer.epochs=3", "noise=gaussian"]
    assert run_main([*base, "output_root=plain"]) == 0
    assert run_main([*base, "output_root=logged", "logger=tensorboard", "logger.tensorboard.figures_every=1"]) == 0
    (plain,), (logged,) = (tmp_path / "plain" / "runs").iterdir(), (tmp_path / "logged" / "runs").iterdir()
    assert [row["val_mse"] for row in history(plain)] == [row["val_mse"] for row in history(logged)]


def test_epoch_metrics_name_every_validation_number():
    record = EpochRecord(stage="train", epoch=3, train_loss=0.5, val_loss=0.4, val_mse=0.01, val_fvu=0.2, l0=16.0,
                         dead_fraction=0.0, dense_fraction=0.1, mean_activation=0.3, val_penalty=0.0, lr=1e-3,
                         seconds=1.0)  # fmt: skip
    assert epoch_metrics(record) == {
        "train/epoch_loss": 0.5, "lr": 1e-3, "epoch": 3.0, "val/loss": 0.4, "val/mse": 0.01, "val/fvu": 0.2,
        "val/penalty": 0.0, "val/l0": 16.0, "val/dead_fraction": 0.0, "val/dense_fraction": 0.1,
        "val/mean_activation": 0.3,
    }  # fmt: skip


def test_ctrl_c_after_training_waits_for_the_results_and_closes_the_logged_run(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from mlflow import MlflowClient

    import autoenc_cli.job as job_module

    drawings = job_module.run_figure_drawings

    def interrupted_while_writing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the figures are drawn
        return drawings(*args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job_module, "run_figure_drawings", interrupted_while_writing)
    assert run_main(["train", *QUICK, "logger=mlflow"]) == 0
    run_dir = only_run_dir(tmp_path)
    assert read_metrics(run_dir)["status"] == "completed" and (run_dir / "report.html").is_file()
    assert "SIGINT came after training ended; the run finished writing" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("autoenc").experiment_id])
    assert run.info.status == "FINISHED" and "summary/val_mse" in run.data.metrics


def test_ctrl_c_while_loading_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    import autoenc_cli.job as job_module

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job_module, "build_parts", interrupted)
    assert run_main(["train", *QUICK]) == 130
    assert capsys.readouterr().err.strip() == "autoenc: error: interrupted"
    assert not (tmp_path / "outputs").exists()


def test_mlflow_store_mistakes_are_one_line_and_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "logger=mlflow", "logger.mlflow.tracking_uri=bogus://x"]) == 2
    assert "logger.mlflow.tracking_uri='bogus://x' is not allowed: give a sqlite, http" in capsys.readouterr().err
    assert run_main(["train", *QUICK, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert "logger=mlflow: the tracking server http://127.0.0.1:9 does not answer" in error
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())
    # The removed folder's train.log is closed and detached: nothing later in this process writes there.
    import logging

    handlers = [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.FileHandler)]
    assert not [handler for handler in handlers if str(tmp_path) in handler.baseFilename]


def test_a_knob_given_without_its_logger_says_where_it_lives(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *QUICK, "logger=[tensorboard,mlflow]", "logger.figures_every=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "autoenc: error: unknown key 'logger.figures_every': 'figures_every' is not a logger option (mlflow, "
        "tensorboard, wandb); each option's knobs live under its name, e.g. logger.tensorboard.figures_every=... "
        "logger.mlflow.figures_every=..."
    )


def test_the_logged_loss_is_the_mean_since_the_last_report_also_after_a_mid_epoch_resume(tmp_path):
    from types import SimpleNamespace

    from autoenc_cli.loggers.base import Logger
    from autoenc_cli.loggers.run_loggers import RunLoggers
    from autoenc_cli.schema.resolve import resolve
    from autoenc_cli.training.callbacks import StepEnd

    from conftest import compose_config

    logged = []

    class Collect(Logger):
        def log_metrics(self, metrics, step):
            logged.append((step, metrics["train/loss"]))

    parts = SimpleNamespace(config=resolve(compose_config(QUICK)))
    # A checkpoint taken at step 3 of an epoch, after losses summing to 3.0 (1.0 each).
    resume = {"step_in_epoch": 3, "running_loss": 3.0, "global_step": 13}
    loggers = RunLoggers.build(parts, tmp_path, "run", None, resume)
    loggers.loggers["collect"] = Collect(None, None)
    loggers.on_step(StepEnd(step=5, loss=(3.0 + 0.5 + 0.5) / 5, global_step=15))  # steps 4, 5: loss 0.5 each
    loggers.on_step(StepEnd(step=2, loss=0.25, global_step=17))  # a new epoch: its first two steps
    assert logged == [(15, pytest.approx(0.5)), (17, pytest.approx(0.25))]


JSONL_LOGGER = """
import json
from dataclasses import dataclass

from autoenc_cli.loggers.base import Logger, LoggerConfig
from autoenc_cli.registry import REGISTRY


@dataclass
class JsonlConfig(LoggerConfig):
    name: str = "jsonl"


@REGISTRY.register(JsonlConfig)
class JsonlLogger(Logger):
    run_folder_entries = ("jsonl",)

    def start(self):
        self.folder = self.context.folder / "jsonl"
        self.folder.mkdir(exist_ok=True)
        return {}

    def log_metrics(self, metrics, step):
        with open(self.folder / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\\n")

    def finish(self, status):
        (self.folder / "status").write_text(status)

    @classmethod
    def finish_sweep(cls, sweep_dir):
        (sweep_dir / "jsonl-sweep").write_text(str(len(list(sweep_dir.glob("*/jsonl")))))
"""


def test_a_new_logger_is_one_module_and_one_yaml(tmp_path, monkeypatch, capsys):
    """A tracker added the way a user adds one: a module in a package the registry searches and a YAML
    preset in a config folder (-cd); nothing else of autoenc edited, and it logs a sweep's jobs."""
    from autoenc_cli.job import nothing_started
    from autoenc_cli.registry import REGISTRY

    package = tmp_path / "my_loggers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jsonl.py").write_text(JSONL_LOGGER)
    (tmp_path / "my_configs" / "logger").mkdir(parents=True)
    (tmp_path / "my_configs" / "logger" / "jsonl.yaml").write_text("# @package logger.jsonl\nfigures_every: 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY.names("logger")  # the real options first; the test's option goes into a copy that is undone
    monkeypatch.setattr(REGISTRY, "_entries", dict(REGISTRY._entries))
    monkeypatch.setattr(REGISTRY, "_packages", {**REGISTRY._packages, "extra": "my_loggers"})
    monkeypatch.setattr(REGISTRY, "_discovered", False)
    assert "jsonl" in REGISTRY.names("logger") and "jsonl" in nothing_started()
    monkeypatch.chdir(tmp_path)
    command = ["train", "-m", "-cd", "my_configs", *QUICK, "trainer.epochs=1", "trainer.figures=false"]
    assert run_main([*command, "logger=jsonl", "seed=1,2", "hydra.sweep.dir=sweep"]) == 0
    for job in ("0", "1"):
        lines = [json.loads(line) for line in (tmp_path / "sweep" / job / "jsonl" / "metrics.jsonl").open()]
        epoch = next(line for line in lines if "val/mse" in line)
        assert epoch["val/mse"] == pytest.approx(read_metrics(tmp_path / "sweep" / job)["val_mse"])
        assert "summary/val_mse" in lines[-1] and "val/l0" in epoch and "train/loss" in lines[0]
        assert (tmp_path / "sweep" / job / "jsonl" / "status").read_text() == "completed"
    assert (tmp_path / "sweep" / "jsonl-sweep").read_text() == "2"  # after both jobs, once
