"""``autoenc export``: a run's model as model.safetensors + config.json, loaded back by load_run bit for bit."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from autoenc_cli import load_run
from autoenc_cli.errors import UserError
from autoenc_cli.export import export_run
from autoenc_cli.schema.resolve import typed_config

from conftest import SAMPLE_VECTORS, TINY, run_main, train_in

QUIET = [*TINY, "trainer.epochs=1", "trainer.figures=false", "trainer.pca_baseline=false"]


def trained(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    root = tmp_path_factory.mktemp(name)
    train_in(root, ["train", *QUIET, *overrides])
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "fc", ["model.code_dim=12"])


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory) -> Path:
    """Parameters and buffers: the learned input bias and AuxK's dead-unit counters."""
    return trained(tmp_path_factory, "topk", ["model=sparse_fc", "model.code_dim=32", "sparsity=topk", "k=4"])


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "tied", ["model.tied=true", "model.encoder=[{width: 24}]", "model.code_dim=6"])


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory) -> Path:
    """784-32-8, tied, one epoch per stage, then untied fine-tuning: stage1, stage2, finetune checkpoints."""
    return trained(
        tmp_path_factory,
        "greedy",
        ["model.tied=true", "model.encoder=[{width: 32}]", "model.code_dim=8", "schedule=greedy"]
        + ["schedule.epochs_per_stage=1"],
    )


IMAGES = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def assert_same_model(run_dir: Path, export: Path, checkpoint: str = "best") -> None:
    """The export loads as the run's checkpoint does: the same tensors, bit for bit the same outputs."""
    original, exported = load_run(run_dir, checkpoint), load_run(export)
    assert torch.equal(original.encode(IMAGES), exported.encode(IMAGES))
    assert torch.equal(original.reconstruct(IMAGES), exported.reconstruct(IMAGES))
    assert torch.equal(original.decode(original.encode(IMAGES)), exported.decode(exported.encode(IMAGES)))
    theirs, ours = original.model.state_dict(), exported.model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[key], ours[key]) for key in theirs)
    assert exported.config == original.config and exported.checkpoint == export / "model.safetensors"
    fields = ("phase", "phase_index", "epoch", "data_fingerprint")
    assert [getattr(exported, name) for name in fields] == [getattr(original, name) for name in fields]
    assert exported.model.code_dim == original.model.code_dim and not exported.model.training


def read_files(export: Path) -> tuple[dict, dict, dict]:
    """config.json with json, model.safetensors with safetensors' own reader: (config, {key: shape}, metadata)."""
    config = json.loads((export / "config.json").read_text())
    with safe_open(str(export / "model.safetensors"), framework="pt") as handle:
        shapes = {key: tuple(handle.get_tensor(key).shape) for key in handle.keys()}
        metadata = handle.metadata()
    return config, shapes, metadata


@pytest.mark.parametrize("fixture", ["fc_run", "topk_run", "tied_run"])
def test_an_export_loads_as_the_run_bit_for_bit(fixture, request, tmp_path):
    run_dir = request.getfixturevalue(fixture)
    export = tmp_path / "shared"
    export_run(run_dir, export)
    assert sorted(path.name for path in export.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_model(run_dir, export)
    config, shapes, metadata = read_files(export)
    model = load_run(run_dir).model
    assert shapes == {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert (config["format"], config["version"], metadata["autoenc_format"]) == ("autoenc-export", 1, "autoenc-export")
    assert config["input_shape"] == [1, 28, 28] and config["code_dim"] == model.code_dim
    assert typed_config(config["config"]) == load_run(run_dir).config
    assert config["source"]["run"] == str(run_dir.resolve()) and config["source"]["checkpoint"].endswith("best.pt")
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert config["data_fingerprint"] == state["fingerprint"]["data"] and config["epoch"] == state["epoch"]


def test_buffers_and_the_input_bias_are_exported(topk_run, tmp_path):
    export_run(topk_run, tmp_path / "shared")
    _, shapes, _ = read_files(tmp_path / "shared")
    buffers = "code_transform.members.topk.auxk."
    assert shapes["input_bias"] == (1, 28, 28) and shapes[f"{buffers}samples_since_fired"] == (32,)
    with safe_open(str(tmp_path / "shared" / "model.safetensors"), framework="pt") as handle:
        steps = handle.get_tensor(f"{buffers}steps")
    assert steps.dtype == torch.int64 and int(steps) == 10  # 320 training digits / 32 per batch, one epoch


def test_a_tied_run_stores_its_shared_weight_once(tied_run, tmp_path):
    export_run(tied_run, tmp_path / "shared")
    _, shapes, _ = read_files(tmp_path / "shared")
    weights = sorted(key for key in shapes if key.endswith("weight"))
    assert weights == ["encoder.1.0.weight", "encoder.2.0.weight"]  # the decoder's are their transposes
    assert shapes["decoder.0.0.bias"] == (24,) and shapes["decoder.1.0.bias"] == (784,)


@pytest.mark.parametrize(
    ("checkpoint", "phase", "code_dim"), [("stage1", "stage1", 32), ("stage2", "stage2", 8), ("best", "finetune", 8)]
)
def test_a_greedy_checkpoint_exports_its_phases_network(greedy_run, tmp_path, checkpoint, phase, code_dim):
    export = tmp_path / checkpoint
    export_run(greedy_run, export, checkpoint)
    assert_same_model(greedy_run, export, checkpoint)
    config, shapes, _ = read_files(export)
    assert (config["phase"], config["code_dim"], load_run(export).model.code_dim) == (phase, code_dim, code_dim)
    if checkpoint == "stage1":  # the outer layer pair only: 784-32-784, the shared weight once
        assert shapes == {"encoder.1.0.weight": (32, 784), "encoder.1.0.bias": (32,), "decoder.0.0.bias": (784,)}
    if checkpoint == "best":  # fine-tuned untied: each decoder layer has its own weight
        assert shapes["decoder.0.0.weight"] == (32, 8) and shapes["decoder.1.0.weight"] == (784, 32)


def test_nothing_is_pickled(fc_run, tmp_path):
    export_run(fc_run, tmp_path / "shared")
    raw = (tmp_path / "shared" / "model.safetensors").read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])  # safetensors: a JSON header, then raw tensor bytes
    header = json.loads(raw[8 : 8 + header_size])
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F32"}
    assert b"\x80\x02" not in raw[: 8 + header_size] and not raw.startswith(b"PK")  # no pickle, no torch zip
    json.loads((tmp_path / "shared" / "config.json").read_text())


def test_the_commands_take_an_export_as_they_take_the_run(fc_run, tmp_path, capsys):
    export = tmp_path / "shared"
    assert run_main(["export", f"run={fc_run}", f"out={export}"]) == 0
    assert f"to {export}" in capsys.readouterr().out.replace("\n", "")
    for source, name in ((fc_run, "from_run"), (export, "from_export")):
        assert run_main(["encode", f"run={source}", "split=all", f"out={tmp_path / name}.npz"]) == 0
        assert run_main(["eval", f"run={source}", "probe.labels_per_class=[]", f"out={tmp_path / name}.json"]) == 0
    np.savez(tmp_path / "images.npz", images=(IMAGES[:, 0].numpy() * 255).astype(np.uint8))
    for source, name in ((fc_run, "from_run"), (export, "from_export")):
        reconstruct = [
            "reconstruct",
            f"run={source}",
            f"input={tmp_path / 'images.npz'}",
            f"out={tmp_path / name}_r.npz",
        ]
        assert run_main(reconstruct) == 0
    run_codes, export_codes = np.load(tmp_path / "from_run.npz"), np.load(tmp_path / "from_export.npz")
    assert run_codes["codes"].shape == (400, 12)
    assert all(np.array_equal(run_codes[key], export_codes[key]) for key in ("codes", "split", "labels"))
    reports = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("from_run", "from_export")]
    assert reports[0]["mse"] == reports[1]["mse"] and reports[0]["l0"] == reports[1]["l0"]
    recon = [np.load(tmp_path / f"{name}_r.npz")["reconstructions"] for name in ("from_run", "from_export")]
    assert np.array_equal(*recon)
    assert run_main(["eval", f"run={export}", "probe.labels_per_class=[]"]) == 0  # eval.json beside, no run report
    assert (export / "eval.json").is_file() and not (export / "report.html").exists()
    assert run_main(["export", f"run={export}", f"out={tmp_path / 'again'}"]) == 0  # an export of an export
    assert_same_model(fc_run, tmp_path / "again")
    source = json.loads((tmp_path / "again" / "config.json").read_text())["source"]
    assert (source["run"], source["via"]) == (str(fc_run.resolve()), str(export.resolve()))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoenc: error: ") and "\n" not in err, err
    return err


def test_out_is_refused_unless_new_empty_or_an_earlier_export_with_overwrite(fc_run, tmp_path, capsys):
    export = tmp_path / "shared"
    (tmp_path / "empty").mkdir()
    assert run_main(["export", f"run={fc_run}", f"out={tmp_path / 'empty'}"]) == 0  # an empty folder is fine
    assert run_main(["export", f"run={fc_run}", f"out={export}"]) == 0
    first = (export / "config.json").read_text()
    assert run_main(["export", f"run={fc_run}", f"out={export}", "checkpoint=last"]) == 2
    assert "already holds an export; add overwrite=true" in one_line_error(capsys)
    assert (export / "config.json").read_text() == first
    assert run_main(["export", f"run={fc_run}", f"out={export}", "checkpoint=last", "overwrite=true"]) == 0
    assert json.loads((export / "config.json").read_text())["source"]["checkpoint"].endswith("last.pt")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in ("false", "true"):  # a folder of other files is never replaced
        assert run_main(["export", f"run={fc_run}", f"out={other}", f"overwrite={overwrite}"]) == 2
        assert "already holds other files (notes.txt)" in one_line_error(capsys)
    assert (other / "notes.txt").read_text() == "mine"
    cases = {
        tmp_path / "notes.txt": "is a file",
        fc_run / "export": "is inside the run folder",
        fc_run: "is or holds the run folder",
        fc_run.parent: "is or holds the run folder",
    }
    (tmp_path / "notes.txt").write_text("mine")
    for out, message in cases.items():
        assert run_main(["export", f"run={fc_run}", f"out={out}", "overwrite=true"]) == 2
        assert message in one_line_error(capsys)
    assert not (fc_run / "export").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "notes.txt", "other", "shared"]


def test_a_missing_run_or_checkpoint_is_one_line(fc_run, tmp_path, capsys):
    assert run_main(["export", f"run={tmp_path / 'nowhere'}", f"out={tmp_path / 'a'}"]) == 2
    assert "is not a run folder" in one_line_error(capsys)
    assert run_main(["export", f"run={fc_run}", f"out={tmp_path / 'a'}", "checkpoint=stage3"]) == 2
    assert "checkpoints/stage3.pt" in one_line_error(capsys)
    assert run_main(["export", f"run={fc_run}"]) == 2
    assert "out" in one_line_error(capsys)
    assert not (tmp_path / "a").exists()


def test_a_failed_export_leaves_the_earlier_one_and_no_temporary_folder(fc_run, tmp_path, monkeypatch):
    import safetensors.torch

    export = tmp_path / "shared"
    export_run(fc_run, export)
    before = {path.name: path.read_bytes() for path in export.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_run(fc_run, export, "last", overwrite=True)
    assert {path.name: path.read_bytes() for path in export.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["shared"]


def corrupt(export: Path, how: str) -> None:
    config = json.loads((export / "config.json").read_text())
    if how == "no config":
        (export / "config.json").unlink()
    elif how == "no tensors":
        (export / "model.safetensors").unlink()
    elif how == "not json":
        (export / "config.json").write_text("{not json")
    elif how == "another format":
        (export / "config.json").write_text(json.dumps({**config, "format": "hf"}))
    elif how == "newer version":
        (export / "config.json").write_text(json.dumps({**config, "version": 2}))
    elif how == "truncated":
        raw = (export / "model.safetensors").read_bytes()
        (export / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    elif how == "other shapes":
        config["config"]["model"]["code_dim"] = 13
        (export / "config.json").write_text(json.dumps(config))
    elif how == "other dtype":
        from safetensors.torch import load_file, save_file

        tensors = load_file(export / "model.safetensors")
        save_file({key: tensor.double() for key, tensor in tensors.items()}, export / "model.safetensors")
    elif how == "missing tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(export / "model.safetensors")
        save_file(
            {key: tensor for key, tensor in tensors.items() if key != "encoder.1.0.bias"}, export / "model.safetensors"
        )
    elif how == "no input shape":
        (export / "config.json").write_text(json.dumps({**config, "input_shape": None}))


CORRUPTIONS = {
    "no config": "holds model.safetensors but no config.json",
    "no tensors": "has no model.safetensors",
    "not json": "config.json' is not readable JSON",
    "another format": "is not the config.json of an autoenc export",
    "newer version": "export of version 2; this autoenc reads version 1 (upgrade autoenc",
    "truncated": "is not a readable safetensors file",
    "other shapes": "encoder.1.0.weight is F32 [12, 784], the model's is F32 [13, 784]",
    "other dtype": "is F64 [12, 784], the model's is F32 [12, 784]",
    "missing tensor": "does not fit the model built from its config.json (missing encoder.1.0.bias)",
    "no input shape": "lacks a valid input_shape",
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_a_corrupted_export_is_a_one_line_error(fc_run, tmp_path, how):
    export = tmp_path / "shared"
    export_run(fc_run, export)
    corrupt(export, how)
    with pytest.raises(UserError, match="^[^\n]*$") as error:
        load_run(export)
    assert CORRUPTIONS[how] in str(error.value)


def test_a_corrupted_export_on_the_command_line(fc_run, tmp_path, capsys):
    export = tmp_path / "shared"
    export_run(fc_run, export)
    corrupt(export, "truncated")
    assert run_main(["encode", f"run={export}", f"out={tmp_path / 'codes.npz'}"]) == 2
    assert "is not a readable safetensors file" in one_line_error(capsys)
    assert run_main(["encode", f"run={export}", "checkpoint=last", f"out={tmp_path / 'codes.npz'}"]) == 2
    assert "is an exported model, which holds one network; leave checkpoint= out" in one_line_error(capsys)


def test_a_vectors_run_exports_with_its_normalisation_and_data(tmp_path_factory, tmp_path):
    run_dir = trained(
        tmp_path_factory,
        "vectors",
        ["data=vectors", f"data.path={SAMPLE_VECTORS}", "data.normalize=standardize", "model=sparse_fc"]
        + ["model.code_dim=8", "sparsity=topk", "k=2"],
    )
    export = tmp_path / "shared"
    assert run_main(["export", f"run={run_dir}", f"out={export}"]) == 0
    config, _, _ = read_files(export)
    assert config["input_shape"] == [16] and config["config"]["data"]["normalize"] == "standardize"
    original, exported = load_run(run_dir), load_run(export)
    data = exported.load_data()  # the run's data, normalised as in training, its fingerprint checked
    assert torch.equal(original.model.encode(data.val.images), exported.model.encode(data.val.images))
    for source, name in ((run_dir, "run"), (export, "export")):
        assert run_main(["encode", f"run={source}", "split=all", f"out={tmp_path / name}.npz"]) == 0
    assert np.array_equal(np.load(tmp_path / "run.npz")["codes"], np.load(tmp_path / "export.npz")["codes"])
