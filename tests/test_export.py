"""``autoenc export``: a run's model as model.safetensors + config.json, loaded back by load_run bit for bit."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

from autoenc_cli import load_run
from autoenc_cli.errors import UserError
from autoenc_cli.export import export_run
from autoenc_cli.schema.resolve import typed_config

from conftest import SAMPLE_VECTORS, TINY, run_cli, run_main, train_in

QUIET = [*TINY, "trainer.epochs=1", "trainer.figures=false", "trainer.pca_baseline=false"]


def trained(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    root = tmp_path_factory.mktemp(name)
    train_in(root, ["train", *QUIET, *overrides])
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "fc", ["model.code_dim=12"])


TOPK = ["model=sparse_fc", "model.code_dim=32", "sparsity=topk", "k=4"]


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory) -> Path:
    """Parameters and buffers: the learned input bias and AuxK's dead-unit counters."""
    return trained(tmp_path_factory, "topk", TOPK)


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
        assert shapes == {
            "input_bias": (1, 28, 28),  # the learned input mean belongs to the outer pair
            "encoder.1.0.weight": (32, 784),
            "encoder.1.0.bias": (32,),
            "decoder.0.0.bias": (784,),
        }
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
    assert "already holds an export (config.json, ...); add overwrite=true" in one_line_error(capsys)
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


NOT_A_NEW_FOLDER = {
    ".": "out='.' is the current folder; choose a new folder for an export, e.g. out=my_model",
    "": "out='' is empty; give a path, e.g. out=my_model",
    "..": "out='..' is a folder above the current one; choose a new folder for an export, e.g. out=my_model",
}


@pytest.mark.parametrize("value", sorted(NOT_A_NEW_FOLDER))
def test_the_current_folder_and_its_parents_are_never_replaced(fc_run, tmp_path, monkeypatch, capsys, value):
    here = tmp_path / "empty" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    inode = here.stat().st_ino
    assert run_main(["export", f"run={fc_run}", f"out={value}"]) == 2
    assert one_line_error(capsys) == f"autoenc: error: {NOT_A_NEW_FOLDER[value]}"
    assert Path.cwd() == here and here.stat().st_ino == inode
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == ["empty", "empty/here"]


def test_an_existing_folder_is_written_into_never_replaced(fc_run, tmp_path):
    export = tmp_path / "shared"
    export.mkdir()
    inode = export.stat().st_ino
    export_run(fc_run, export)
    assert sorted(path.name for path in export.iterdir()) == ["config.json", "model.safetensors"]
    export_run(fc_run, export, "last", overwrite=True)
    assert export.stat().st_ino == inode and sorted(path.name for path in export.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert_same_model(fc_run, export, "last")


def test_a_crash_between_the_two_files_leaves_no_loadable_mix(fc_run, tmp_path, monkeypatch, capsys):
    """Killed after model.safetensors took its place: the folder holds no config.json, so it never loads as
    the new tensors under the old config; a new export replaces the remains (they are an export's)."""
    import autoenc_cli.export as export_module

    export = tmp_path / "shared"
    export_run(fc_run, export)
    real_replace = os.replace

    def crash_at_config(source, target):
        if Path(target).name == "config.json":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(export_module.os, "replace", crash_at_config)
    with pytest.raises(KeyboardInterrupt):
        export_run(fc_run, export, "last", overwrite=True)
    monkeypatch.setattr(export_module.os, "replace", real_replace)
    assert [path.name for path in export.iterdir()] == ["model.safetensors"]  # no staged copy left either
    with pytest.raises(UserError):
        load_run(export)
    assert run_main(["export", f"run={fc_run}", f"out={export}"]) == 2
    assert "already holds an export (model.safetensors); add overwrite=true" in one_line_error(capsys)
    assert run_main(["export", f"run={fc_run}", f"out={export}", "checkpoint=last", "overwrite=true"]) == 0
    assert_same_model(fc_run, export, "last")


def test_a_second_export_to_a_folder_in_use_is_refused_and_touches_nothing(fc_run, tmp_path):
    """Another process holds the folder (an export being written): this one refuses at once, even with
    overwrite=true, and leaves the folder byte for byte as it was."""
    from autoenc_cli.folder_lock import claim_folder

    export = tmp_path / "shared"
    export_run(fc_run, export)
    before = {path.name: path.read_bytes() for path in export.iterdir()}
    claim = claim_folder(export, "model export")
    try:
        result = run_cli(["export", f"run={fc_run}", f"out={export}", "overwrite=true"], cwd=tmp_path)
    finally:
        claim.release()
    assert result.returncode == 2 and result.stderr == (
        f"autoenc: error: '{export}' is in use by another autoenc process (a model export is being written there); "
        "wait for it to end, or choose another folder\n"
    )
    assert {path.name: path.read_bytes() for path in export.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared"]


def test_a_failed_export_into_a_new_folder_leaves_nothing(fc_run, tmp_path, monkeypatch):
    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_run(fc_run, tmp_path / "new" / "model")
    assert list(tmp_path.iterdir()) == []


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
    "other dtype": "input_bias is F64 [1, 28, 28], the model's is F32 [1, 28, 28]",  # the first tensor checked
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


# ---------------------------------------------------------------------------------------------------
# Exports are untrusted input (issue 25, item 7): someone else's config.json and model.safetensors are
# checked before anything is built, and nothing in them is resolved.

SECRET = "AUTOENC_TEST_SECRET"


def craft(export: Path, how: str) -> None:
    """Edit a real export (of the ``topk_run``: sparse_fc, code size 32, topk k=4) the way a shared file
    could be: config.json's values, or model.safetensors's tensors and header."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((export / "config.json").read_text())
    config, topk = meta["config"], meta["config"]["sparsity"]["topk"]
    tensors_file = export / "model.safetensors"
    if how in TENSOR_EDITS:
        tensors = load_file(tensors_file)
        TENSOR_EDITS[how](tensors)
        save_file(tensors, tensors_file, metadata={"format": "pt"})
        return
    if how == "header length":
        raw = tensors_file.read_bytes()
        tensors_file.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
        return
    if how == "NaN in config.json":
        (export / "config.json").write_text(json.dumps(meta).replace('"code_dim": 32', '"code_dim": NaN', 1))
        return
    edits = {
        "negative code_dim": lambda: config["model"].update(code_dim=-1),
        "code_dim 1e9": lambda: (config["model"].update(code_dim=10**9), meta.update(code_dim=10**9)),
        "code_dim 1e9 as a float": lambda: config["model"].update(code_dim=1e9),
        "huge input_shape": lambda: meta.update(input_shape=[1, 100_000, 100_000]),
        "code_dim of the wrong type": lambda: config["model"].update(code_dim="thirty-two"),
        "interpolation in a number": lambda: config["model"].update(code_dim=f"${{oc.env:{SECRET}}}"),
        "interpolation in an option name": lambda: config["data"].update(name=f"${{oc.env:{SECRET}}}"),
        "k above the code size": lambda: (topk.update(k=64), config.update(k=64)),
        "k given twice": lambda: topk.update(k=64),
        "a billion layers": lambda: config["model"].update(encoder=[{"width": 8, "num_layers": 10**9}]),
        "a huge run config": lambda: config["gallery"].update(caption="x" * 70_000),
    }
    edits[how]()
    (export / "config.json").write_text(json.dumps(meta))


def _poison(tensor: torch.Tensor, index: int, value: float) -> torch.Tensor:
    tensor.view(-1)[index] = value
    return tensor


TENSOR_EDITS = {
    "NaN weight": lambda tensors: _poison(tensors["encoder.1.0.bias"], 3, float("nan")),
    "infinite weight": lambda tensors: _poison(tensors["decoder.0.0.weight"], 0, float("-inf")),
    "half-precision tensor": lambda tensors: tensors.update({"encoder.1.0.bias": tensors["encoder.1.0.bias"].half()}),
    "extra tensor": lambda tensors: tensors.update({"extra.weight": torch.zeros(2)}),
    "missing tensors": lambda tensors: [tensors.pop(key) for key in [k for k in tensors if "auxk" in k]],
}

# Each crafted export and the one line that refuses it (after the export's path).
UNTRUSTED = {
    "negative code_dim": "config.json': model.code_dim=-1 is not allowed: must be >= 1 (in the run config it holds)",
    "code_dim 1e9": "model.safetensors' does not fit the model built from its config.json: encoder.1.0.weight is "
    "F32 [32, 784], the model's is F32 [1000000000, 784]",
    "code_dim 1e9 as a float": "model.code_dim=1000000000.0 has the wrong type; expected integer",
    "huge input_shape": "model.safetensors' does not fit the model built from its config.json: input_bias is "
    "F32 [1, 28, 28], the model's is F32 [1, 100000, 100000]",
    "code_dim of the wrong type": "model.code_dim='thirty-two' has the wrong type; expected integer",
    "interpolation in a number": f"model.code_dim='${{oc.env:{SECRET}}}' has the wrong type; expected integer",
    "interpolation in an option name": f"data.name='${{oc.env:{SECRET}}}' is not allowed: choose one of",
    "k above the code size": "sparsity.topk.k=64 is not allowed: must be <= the code size model.code_dim=32",
    "k given twice": "k=4 and sparsity.topk.k=64 set the same value; give only one of them",
    "a billion layers": "model describes 1,000,000,000 layers, but model.safetensors holds 8 tensors",
    "a huge run config": "its run config takes 71,",
    "NaN in config.json": "config.json' is not readable JSON (NaN is not a JSON number",
    # safetensors' own wording of the reason differs between versions (HeaderTooLarge, header too large)
    "header length": "model.safetensors' is not a readable safetensors file (Error while deserializing header: ",
    "NaN weight": "model.safetensors' holds NaN or infinite weights: encoder.1.0.bias has 1 of 32 values not finite",
    "infinite weight": "holds NaN or infinite weights: decoder.0.0.weight has 1 of 25,088 values not finite",
    "half-precision tensor": "encoder.1.0.bias is F16 [32], the model's is F32 [32]",
    "extra tensor": "does not fit the model built from its config.json (unexpected extra.weight)",
    "missing tensors": "(missing code_transform.members.topk.auxk.any_dead, code_transform.members.topk.auxk."
    "samples_since_fired, code_transform.members.topk.auxk.steps)",
}


class NoBigAllocation(TorchDispatchMode):
    """Fails any tensor made with more than 10^8 values anywhere but on the meta device (every factory
    op passes its size and device here): a check that builds the model before comparing it fails."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and args and isinstance(args[0], (list, tuple)):
            values = math.prod(int(n) for n in args[0])
            device = torch.device(kwargs["device"] or "cpu")
            assert device.type == "meta" or values <= 10**8, f"{func} of {values:,} values on {device}"
        return func(*args, **kwargs)


def crafted_export(run_dir: Path, folder: Path, how: str) -> Path:
    export_run(run_dir, folder)
    craft(folder, how)
    return folder


@pytest.mark.parametrize("how", list(UNTRUSTED))
def test_an_untrusted_export_is_refused_in_one_line_before_anything_is_built(topk_run, tmp_path, monkeypatch, how):
    monkeypatch.setenv(SECRET, "12")  # a number: resolved, it would pass for a code size
    export = crafted_export(topk_run, tmp_path / "shared", how)
    with pytest.raises(UserError, match="^[^\n]*$") as error, NoBigAllocation():
        load_run(export)
    assert f"'{export}/" in str(error.value) and UNTRUSTED[how] in str(error.value), str(error.value)


def test_interpolations_stay_text_where_a_string_is_expected(topk_run, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET, "resolved")
    export = tmp_path / "shared"
    export_run(topk_run, export)
    meta = json.loads((export / "config.json").read_text())
    meta["config"]["output_root"] = f"${{oc.env:{SECRET}}}/a \\${{b}}"
    (export / "config.json").write_text(json.dumps(meta))
    assert load_run(export).config.output_root == f"${{oc.env:{SECRET}}}/a \\${{b}}"


def test_an_export_loads_without_the_trackers_its_run_logged_to(topk_run, tmp_path, monkeypatch):
    """A tracker is training's business: a run logged to W&B loads where wandb is not installed."""
    import autoenc_cli.loggers.base as loggers
    from autoenc_cli.extras import MissingExtra

    export = tmp_path / "shared"
    export_run(topk_run, export)
    meta = json.loads((export / "config.json").read_text())
    meta["config"]["logger"] = {"wandb": {"name": "wandb"}}
    (export / "config.json").write_text(json.dumps(meta))

    def not_installed(module, extra, feature):
        raise MissingExtra(f"{feature} needs the '{extra}' extra")

    monkeypatch.setattr(loggers, "require", not_installed)
    assert list(load_run(export).config.logger) == ["wandb"]


def test_a_non_finite_checkpoint_is_not_exported(fc_run, tmp_path, capsys):
    from autoenc_cli.training.checkpoint import load_checkpoint, save_checkpoint

    run_dir = Path(shutil.copytree(fc_run, tmp_path / "run"))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    state["model"]["encoder.1.0.weight"][0, 0] = float("nan")
    save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
    assert run_main(["export", f"run={run_dir}", "checkpoint=last", f"out={tmp_path / 'shared'}"]) == 2
    assert "last.pt' holds NaN or infinite weights: encoder.1.0.weight has 1 of 9,408" in one_line_error(capsys)
    assert not (tmp_path / "shared").exists()


# ---------------------------------------------------------------------------------------------------
# An export carries what its model needs of the run (issue 25, item 8): a normalised vectors run's
# statistics, so raw vectors encode without the run's data; and whether the weights are a finished run's.


def raw_vectors(count: int, seed: int) -> np.ndarray:
    """16 features with their own offsets and scales, so normalising them is far from a no-op."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, 16)) * np.linspace(0.5, 6, 16) + np.linspace(-4, 9, 16)).astype(np.float32)


def expected_statistics(train: np.ndarray, normalize: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(shift, divisor) computed here, independently of autoenc's chunked float64 accumulation."""
    values = train.astype(np.float64)
    if normalize == "standardize":
        return values.mean(axis=0), values.std(axis=0)
    return None, np.sqrt((values**2).sum(axis=1).mean() / values.shape[1])


@pytest.mark.parametrize("normalize", ["standardize", "unit_mean_square"])
def test_an_export_of_a_normalised_vectors_run_encodes_raw_vectors_as_the_run(
    tmp_path_factory, tmp_path, capsys, normalize
):
    from autoenc_cli.data.vectors import VectorsConfig, split_rows
    from autoenc_cli.errors import DataError

    data_dir = tmp_path_factory.mktemp("acts")
    raw, fresh = raw_vectors(120, seed=0), raw_vectors(30, seed=1)  # fresh: activations the run never saw
    np.save(data_dir / "acts.npy", raw)
    run_dir = trained(
        tmp_path_factory,
        normalize,
        ["data=vectors", f"data.path={data_dir / 'acts.npy'}", f"data.normalize={normalize}", "model=sparse_fc"]
        + ["model.code_dim=8", "sparsity=topk", "k=2"],
    )
    export = tmp_path / "shared"
    export_run(run_dir, export)
    run = load_run(run_dir)
    train_rows, val_rows = split_rows(len(raw), run.config.data)
    stored = json.loads((export / "config.json").read_text())["normalization"]
    shift, divisor = expected_statistics(raw[train_rows], normalize)
    assert stored["method"] == normalize and (stored["shift"] is None) == (shift is None)
    if shift is not None:
        np.testing.assert_allclose(stored["shift"], shift, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stored["divisor"], divisor, rtol=1e-6)
    as_stored = torch.tensor(stored["divisor"]), torch.tensor(stored["shift"] if shift is not None else 0.0)
    assert torch.equal(run.input_normalisation().divisor, as_stored[0])  # the run's own statistics, bit for bit
    normalised = (torch.from_numpy(fresh) - as_stored[1]) / as_stored[0]

    exported = load_run(export)
    codes = exported.encode(fresh)
    assert torch.equal(codes, run.encode(fresh)) and torch.equal(codes, run.model.encode(normalised))
    assert torch.equal(exported.encode(raw[val_rows]), run.model.encode(run.load_data().val.images))  # as trained
    reconstructions = exported.reconstruct(fresh)  # raw vectors in, raw vectors out
    assert torch.equal(reconstructions, run.model(normalised).reconstruction * as_stored[0] + as_stored[1])
    torch.testing.assert_close(exported.decode(codes), reconstructions)
    torch.testing.assert_close(exported.encode(fresh[0]), codes[:1])  # one vector (a batch of one: other kernels)

    np.save(tmp_path / "fresh.npy", fresh)  # other vectors on the command line: the run's statistics, not theirs
    other = ["data=vectors", f"data.path={tmp_path / 'fresh.npy'}", f"data.normalize={normalize}"]
    assert run_main(["encode", f"run={export}", *other, "split=all", f"out={tmp_path / 'codes.npz'}"]) == 0
    order = np.concatenate(split_rows(len(fresh), VectorsConfig(path="fresh.npy")))  # its split, all of it
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "codes.npz")["codes"]), codes[order])

    meta = json.loads((export / "config.json").read_text())
    (tmp_path / "older").mkdir()  # an export written before the statistics were kept derives them from the data
    (tmp_path / "older" / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "normalization"}))
    shutil.copy(export / "model.safetensors", tmp_path / "older")
    assert torch.equal(load_run(tmp_path / "older").encode(fresh), codes)

    (data_dir / "acts.npy").rename(tmp_path / "moved.npy")  # the run's data is gone: the export still encodes
    assert torch.equal(load_run(export).encode(fresh), codes)
    with pytest.raises(DataError, match="^[^\n]*$") as error:
        load_run(run_dir).encode(fresh)
    gone = f"the run's data.normalize={normalize} statistics come from its data, which cannot be read"
    assert gone in str(error.value)
    assert run_main(["export", f"run={run_dir}", f"out={tmp_path / 'late'}"]) == 2  # an export without them: none
    assert gone in one_line_error(capsys) and not (tmp_path / "late").exists()


@pytest.mark.parametrize(
    ("normalization", "message"),
    [
        ("standardize", " must be {method: standardize, shift, divisor}"),
        ({"method": "unit_mean_square", "shift": None, "divisor": 1.0}, " must be {method: standardize"),
        ({"method": "standardize", "shift": [0.0] * 15, "divisor": [1.0] * 16}, ".shift must be a list of 16 numbers"),
        ({"method": "standardize", "shift": [0.0] * 16, "divisor": 2.0}, ".divisor must be a list of 16 numbers"),
        ({"method": "standardize", "shift": ["0"] * 16, "divisor": [1.0] * 16}, ".shift must be a list of 16 numbers"),
        ({"method": "standardize", "shift": [0.0] * 16, "divisor": [0.0] * 16}, ".divisor must be > 0"),
    ],
)
def test_an_exports_normalization_is_checked(tmp_path_factory, tmp_path, normalization, message):
    run_dir = trained(
        tmp_path_factory,
        "standardized",
        ["data=vectors", f"data.path={SAMPLE_VECTORS}", "data.normalize=standardize", "model.code_dim=4"]
        + ["model.output_activation=linear"],
    )
    export = tmp_path / "shared"
    export_run(run_dir, export)
    meta = json.loads((export / "config.json").read_text())
    meta["normalization"] = normalization
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="^[^\n]*$") as error:
        load_run(export)
    assert f"'{export}/config.json': normalization{message}" in str(error.value), str(error.value)


def test_config_json_says_when_the_source_run_failed_or_stopped_mid_epoch(fc_run, tmp_path, capsys):
    from autoenc_cli.training.checkpoint import load_checkpoint, save_checkpoint

    def source(export: Path) -> tuple:
        written = json.loads((export / "config.json").read_text())["source"]
        return written["status"], written["mid_epoch"], written["step_in_epoch"]

    assert run_main(["export", f"run={fc_run}", f"out={tmp_path / 'done'}"]) == 0
    assert "note:" not in capsys.readouterr().out and source(tmp_path / "done") == ("completed", False, 0)

    run_dir = Path(shutil.copytree(fc_run, tmp_path / "run"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "failed"}))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    save_checkpoint(run_dir / "checkpoints" / "last.pt", {**state, "step_in_epoch": 3})  # as an interruption saves
    assert load_run(run_dir, "last").step_in_epoch == 3
    assert run_main(["export", f"run={run_dir}", "checkpoint=last", f"out={tmp_path / 'unfinished'}"]) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert note == [
        "note: the source run's status is failed and its checkpoint was taken mid-epoch (3 steps into an epoch); "
        "config.json's source says so"
    ]
    assert source(tmp_path / "unfinished") == ("failed", True, 3)
    assert load_run(tmp_path / "unfinished").step_in_epoch == 3
    assert run_main(["export", f"run={tmp_path / 'unfinished'}", f"out={tmp_path / 'again'}"]) == 0  # kept
    assert source(tmp_path / "again") == ("failed", True, 3) and "note: the source run's" in capsys.readouterr().out
    (run_dir / "metrics.json").unlink()  # still training, or killed: no metrics.json yet
    export_run(run_dir, tmp_path / "running")
    assert source(tmp_path / "running") == ("unknown", False, 0)
