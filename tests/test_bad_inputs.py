"""A battery of user mistakes through the real CLI: each ends in one line, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_export import SECRET, TOPK, UNTRUSTED, NoBigAllocation, craft, trained
from test_user_data import user_data_mistakes

from conftest import TINY, case_id, run_cli, run_main
from test_config import bounded_knobs, out_of_range_values


def a_knob_out_of_range_per_option() -> list[list[str]]:
    """The first bounded knob of each option (and of the top level and trainer), just out of range: the CLI's
    one-line refusal of a bound, once per schema. Every knob's bound is checked by
    test_config.test_every_bounded_numeric_knob_rejects_out_of_range_values, at the config check."""
    first: dict[tuple[str, ...], list[str]] = {}
    for choice, key, bounds in bounded_knobs():
        first.setdefault((*choice, key.rpartition(".")[0]), [*choice, f"{key}={out_of_range_values(bounds)[0]}"])
    return list(first.values())


MALFORMED = [["model.code_dim=[1"], ["model.code_dim="], ["=3"], ["model.code_dim=1,2"], ["trainer.epochs=1)"]]
WRONG_TYPES = [
    ["optimizer.lr=abc"],
    ["seed=1.5"],
    ["trainer.epochs=many"],
    ["model.encoder=5"],
    ["trainer.figures=maybe"],
    ["model.code_dim=[1,2]"],
    ["data.batch_size={a: 1}"],
]
UNKNOWN = [
    ["model.code_dimm=3"],
    ["+model.widht=3"],
    ["+trainer.epoch=3"],
    ["model=transformer"],
    ["optimizer=adamw2"],
    ["sparsity=dense"],
    ["noise=blur"],
    ["data=imagenet"],
    ["experiment=nope"],
]
CHOICES = [
    ["schedule.policy=step"],
    ["trainer.device=tpu"],
    ["model.code_activation=swish"],
    ["sparsity=topk", "k=65"],
    ["sparsity=kl", "model.code_activation=relu"],
    ["k=3"],
    ["loss=bce", "model.output_activation=linear"],
]
# A mistake inside a list item (issue 12): named by its full path, e.g. model.encoder[0].width.
LIST_ITEMS = [
    ["model.encoder=[{width:8,widht:3}]"],
    ["model.encoder=[{width:abc}]"],
    ["model.decoder=[{width:8},{widht:3}]"],
    ["model=conv", "model.encoder=[{channels:8,kernal:3}]"],
    ["model=conv", "model.encoder.0.kernal=3"],
    ["model.encoder.0.width=3"],
    ["model.encoder=[{width:8},5]"],
    ["model.encoder=[{width:8,activation:swish}]"],
]
CASES = MALFORMED + WRONG_TYPES + UNKNOWN + CHOICES + LIST_ITEMS + a_knob_out_of_range_per_option()


def assert_one_line_error(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("autoenc: error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("overrides", CASES, ids=case_id)
def test_config_mistakes(overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = run_main(["train", *TINY, *overrides])
    assert_one_line_error(code, capsys.readouterr().err)
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


def data_file_cases(root):
    np.savez(root / "no_images.npz", pixels=np.zeros((4, 2, 2)))
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated")
    (root / "empty").mkdir()
    (root / "bad_images").mkdir()
    (root / "bad_images" / "a.png").write_bytes(b"not an image")
    (root / "bad_images" / "b.png").write_bytes(b"not an image")
    return [
        ["data=npz", f"data.path={root / 'missing.npz'}"],
        ["data=npz", f"data.path={root / 'no_images.npz'}"],
        ["data=npz", f"data.path={root / 'corrupt.npz'}"],
        ["data=npz"],
        ["data=image_folder", f"data.path={root / 'empty'}"],
        ["data=image_folder", f"data.path={root / 'bad_images'}"],
        ["data=mnist", f"data.root={root / 'no_such_root'}"],
        ["data=fashion_mnist", f"data.root={root}"],
        ["data=cifar10", f"data.root={root}"],
    ]


def test_data_file_mistakes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for overrides in data_file_cases(tmp_path):
        code = run_main(["train", *TINY, *overrides])
        assert_one_line_error(code, capsys.readouterr().err)


def test_unwritable_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("in the way")
    code = run_main(["train", *TINY, f"output_root={tmp_path / 'a_file'}"])
    assert_one_line_error(code, capsys.readouterr().err)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert_one_line_error(run_main(["train", *TINY, f"output_root={locked}"]), capsys.readouterr().err)


def test_other_command_mistakes(tmp_path, capsys):
    for argv in (
        ["fly"],
        ["train", f"resume={tmp_path}"],
        ["report", str(tmp_path / "none")],
        ["report", str(tmp_path)],
    ):
        assert_one_line_error(run_main(argv), capsys.readouterr().err)


@pytest.mark.parametrize(
    "overrides", [["model.code_dim=[1"], ["data=npz", "data.path=missing.npz"], ["output_root=/proc/version"]]
)
def test_mistakes_through_a_fresh_process(overrides, tmp_path):
    result = run_cli(["train", *TINY, *overrides], cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr)


# Every refusal says what is allowed (issue 12): the keys that exist there, the type expected, the full
# path of a list item, run= for a bare path, how to quote a path with spaces. (argv, part of the line)
SAYS_WHAT_IS_ALLOWED = [
    # unknown keys list the keys that exist where the unknown one was given
    (["train", "trainer.epoch=3"], "unknown key 'trainer.epoch'; allowed keys in trainer: epochs, device,"),
    (["train", "+trainer.epoch=3"], "unknown key 'trainer.epoch'; allowed keys in trainer: epochs, device,"),
    (["train", "foo=3"], "unknown key 'foo'; allowed keys: model, data,"),
    (["train", "model.code_dimm=3"], "unknown key 'model.code_dimm'; allowed keys in model: name, code_dim,"),
    (["train", "data=npz", "data.pth=x"], "unknown key 'data.pth'; allowed keys in data: name, path,"),
    (["eval", "run=x", "rnu=y"], "unknown key 'rnu'; allowed keys: run, checkpoint,"),
    (["eval", "run=x", "probe.modle=mlp"], "unknown key 'probe.modle'; allowed keys in probe: labels_per_class,"),
    (["encode", "run=x", "out=y", "spilt=all"], "unknown key 'spilt'; allowed keys: run, out,"),
    (["reconstruct", "run=x", "input=y", "out=z", "ovewrite=true"], "unknown key 'ovewrite'; allowed keys: run,"),
    # list items by their full path
    (
        ["train", "model.encoder=[{width:8,widht:3}]"],
        "unknown key 'model.encoder[0].widht'; allowed keys in model.encoder[0]: width, num_layers, activation",
    ),
    (["train", "model.encoder=[{width:abc}]"], "model.encoder[0].width='abc' has the wrong type; expected integer"),
    (["train", "model.decoder=[{width:8},{widht:3}]"], "unknown key 'model.decoder[1].widht'; allowed keys in"),
    (["train", "model=conv", "model.encoder=[{channels:8,kernal:3}]"], "unknown key 'model.encoder[0].kernal'"),
    (["train", "model=conv", "model.encoder.0.kernal=3"], "allowed keys in model.encoder[0]: num_layers, channels"),
    (["train", "model=conv", "model.encoder.0.kernel=[1]"], "model.encoder[0].kernel=[1] has the wrong type"),
    (["train", "model.encoder.0.width=3"], "model.encoder[0] does not exist: model.encoder has 0 items; set the"),
    # wrong types name the expected type
    (["train", "model.encoder=[{width:8},5]"], "model.encoder[1]=5 has the wrong type; expected a mapping with keys"),
    (["train", "model.encoder=5"], "model.encoder=5 has the wrong type; expected a list of mappings with keys width"),
    (["train", "model.encoder={a:1}"], "model.encoder={a:1} has the wrong type; expected a list"),
    (["train", "trainer.figures=maybe"], "trainer.figures='maybe' has the wrong type; expected boolean"),
    (["train", "trainer.threads=x"], "trainer.threads='x' has the wrong type; expected integer or null"),
    (["train", "data=image_folder", "data.path=x", "data.image_size=ab"], "expected a list of integers"),
    (["eval", "run=x", "probe=[1]"], "probe=[1] has the wrong type; expected a mapping"),
    (["eval", "run=x", "threads=many"], "threads='many' has the wrong type; expected integer or null"),
    (["encode", "run=x", "out=y", "threads=0"], "threads=0 is not allowed: must be >= 1"),
    (["reconstruct", "run=x", "input=y", "out=z", "overwrite=perhaps"], "overwrite='perhaps' has the wrong type"),
    # a bare path where run= was meant
    (["eval", "outputs/runs/x"], "'outputs/runs/x' is not KEY=VALUE; to use the run in that folder write run=outputs"),
    (["encode", "outputs/runs/x", "out=codes.npz"], "to use the run in that folder write run=outputs/runs/x"),
    (["reconstruct", "outputs/runs/x", "input=a", "out=b"], "write run=outputs/runs/x"),
    # a path with spaces split by the shell
    (
        ["train", "data=npz", "data.path=/data/my", "images.npz"],
        "quote the whole argument, 'data.path=/data/my images.npz'",
    ),
    (["eval", "run=outputs/my", "run"], "the shell split a path with spaces: quote the whole argument, 'run=outputs"),
    (["reconstruct", "run=r", "input=my", "scans", "out=o"], "'input=my scans'"),
    (["train", "model.encoder=[{width:", "8}]"], "split a value with spaces: quote the whole argument, 'model.enc"),
    (["train", "nonsense"], "'nonsense' is not KEY=VALUE; 'autoenc train --help' lists the options"),
    (["train", "trainer.epochs=2", "nonsense"], "'nonsense' is not KEY=VALUE; 'autoenc train --help' lists"),
    # outputs
    (["reconstruct", "run=x", "input=y", "out=picture.png"], "out='picture.png' names one image file"),
    # variational models: options that only they take, and options they cannot take
    (["train", "model=vae", "sparsity=topk"], "a variational model's code is a Gaussian sample, not a sparse one"),
    (["train", "trainer.nll_samples=5"], "trainer.nll_samples=5 is not allowed: scores variational models only"),
    (["train", "loss.sigma=0.5"], "sets the Gaussian likelihood of a variational model (model=vae)"),
    (["train", "gallery.caption=x", "gallery.panels=[samples]"], "'samples' is drawn only with a variational model"),
    (["train", "model=vae", "data.binarize=always"], "data.binarize='always' is not allowed"),
    (["train", "model=vae", "model.decoder=[{width: null},{width: null}]"], "only the last decoder layer may omit"),
]


@pytest.mark.parametrize(("argv", "expected"), SAYS_WHAT_IS_ALLOWED, ids=[" ".join(a) for a, _ in SAYS_WHAT_IS_ALLOWED])
def test_refusals_say_what_is_allowed(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = run_main([*argv, *(TINY if argv[0] == "train" else [])])
    err = capsys.readouterr().err
    assert_one_line_error(code, err)
    assert expected in err, err
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


# Data as users have it that cannot be used (issue 12): each is one line at load time, no run folder.
USER_DATA = user_data_mistakes(Path(tempfile.mkdtemp(prefix="autoenc-user-data-")))


@pytest.mark.parametrize("name", sorted(USER_DATA))
def test_user_data_mistakes(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    overrides, expected = USER_DATA[name]
    code = run_main(["train", *TINY, *overrides])
    err = capsys.readouterr().err
    assert_one_line_error(code, err)
    assert expected in err, err
    if name.startswith("huge"):  # refused by the config check, from the header: before any run folder
        assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


def earlier_reconstruction() -> bytes:
    """A PNG as autoenc reconstruct writes it (marked as its output)."""
    import torch

    from autoenc_cli.evaluation.commands import _png_bytes

    return _png_bytes(torch.zeros(1, 2, 2, dtype=torch.uint8))


def output_mistakes(root: Path) -> list[tuple[list[str], str]]:
    """An existing output is refused unless overwrite=true; these fail before the run is loaded."""
    (root / "codes.npz").write_bytes(b"mine")
    (root / "pngs").mkdir()
    (root / "pngs" / "0000.png").write_bytes(earlier_reconstruction())
    (root / "plain_file").write_text("mine")
    (root / "folder.npz").mkdir()
    return [
        (["encode", "run=r", f"out={root / 'codes.npz'}"], "already exists; add overwrite=true to replace it"),
        (["encode", "run=r", f"out={root / 'codes'}"], f"out='{root / 'codes.npz'}' already exists"),
        (["encode", "run=r", f"out={root / 'folder.npz'}", "overwrite=true"], "is a folder; give a file name"),
        (["reconstruct", "run=r", "input=i", f"out={root / 'codes.npz'}"], "already exists; add overwrite=true"),
        (["reconstruct", "run=r", "input=i", f"out={root / 'pngs'}"], "already holds 1 reconstructions (0000.png"),
        (["reconstruct", "run=r", "input=i", f"out={root / 'plain_file'}"], "is a file; give a folder for PNGs"),
    ]


def test_output_mistakes(tmp_path, capsys):
    for argv, expected in output_mistakes(tmp_path):
        code = run_main(argv)
        err = capsys.readouterr().err
        assert_one_line_error(code, err)
        assert expected in err, (argv, err)
    assert (tmp_path / "codes.npz").read_bytes() == b"mine"


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "outputs/runs/x"],
        ["train", "data=npz", "data.path=/data/my", "images.npz"],
        ["encode", "run=x", "out=y", "spilt=all"],
    ],
)
def test_other_commands_through_a_fresh_process(argv, tmp_path):
    result = run_cli(argv, cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr)


# One rule for every out= (issue 25): empty, the current folder or above, inside a run, sweep or study folder,
# over an existing file without overwrite=true; refused before the run is loaded, nothing touched.
def out_rule_mistakes(root: Path) -> list[tuple[list[str], str]]:
    for marker, folder in (("run.json", "run"), ("multirun.yaml", "sweep"), ("study.db", "study")):
        (root / folder / "checkpoints").mkdir(parents=True)
        (root / folder / marker).write_text("{}")
        (root / folder / "checkpoints" / "last.pt").write_bytes(b"weights")
    (root / "run" / "metrics.json").write_text("{}")  # what autoenc report takes for a run
    (root / "mine.json").write_text("mine")
    inside = "is inside the {} folder"
    return [
        (["eval", "run=r", "out="], "out='' is empty; give a path, e.g. out=eval.json"),
        (["eval", "run=r", f"out={root / 'run' / 'checkpoints' / 'last.pt'}", "overwrite=true"], inside.format("run")),
        (["eval", "run=r", f"out={root / 'sweep' / 'eval.json'}"], inside.format("sweep")),
        (["eval", "run=r", f"out={root / 'study' / 'eval.json'}"], inside.format("tune study")),
        (["eval", "run=r", f"out={root / 'mine.json'}"], "already exists; add overwrite=true to replace it"),
        (["eval", "run=r", f"out={root / 'mine.json' / 'x.json'}"], "is a file, not a folder"),
        (["encode", "run=r", "out="], "out='' is empty; give a path, e.g. out=codes.npz"),
        (["encode", "run=r", f"out={root / 'run' / 'codes.npz'}"], inside.format("run")),
        (["reconstruct", "run=r", "input=i", "out="], "out='' is empty; give a path"),
        (["reconstruct", "run=r", "input=i", "out=."], "out='.' is the current folder; choose a new folder"),
        (["reconstruct", "run=r", "input=i", f"out={root / 'sweep' / 'pngs'}"], inside.format("sweep")),
        (["export", "run=r", "out="], "out='' is empty; give a path, e.g. out=my_model"),
        (["export", "run=r", "out=."], "out='.' is the current folder; choose a new folder for an export"),
        (["export", "run=r", "out=.."], "out='..' is a folder above the current one"),
        (["export", "run=r", f"out={root / 'study' / 'model'}", "overwrite=true"], inside.format("tune study")),
        (["report", str(root / "run"), "--out", str(root / "sweep" / "cmp")], inside.format("sweep")),
    ]


def test_every_out_follows_one_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = out_rule_mistakes(tmp_path)
    before = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))
    for argv, expected in cases:
        code = run_main(argv)
        err = capsys.readouterr().err
        assert_one_line_error(code, err)
        assert expected in err, (argv, err)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == before
    assert (tmp_path / "mine.json").read_text() == "mine"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == b"weights"


# A shared export is someone else's file (issue 25, item 7): each crafted config.json or model.safetensors is
# refused by the commands in one line, exit 2, before any model is built, and nothing is written.
@pytest.fixture(scope="module")
def export_source(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "export_source", TOPK)


@pytest.mark.parametrize("how", sorted(UNTRUSTED))
def test_untrusted_exports(how, export_source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SECRET, "12")  # a number: resolved, it would pass for a code size
    export = tmp_path / "shared"
    assert run_main(["export", f"run={export_source}", f"out={export}"]) == 0
    craft(export, how)
    capsys.readouterr()
    with NoBigAllocation():
        code = run_main(["encode", f"run={export}", f"out={tmp_path / 'codes.npz'}"])
    err = capsys.readouterr().err
    assert_one_line_error(code, err)
    assert code == 2 and UNTRUSTED[how] in err and not (tmp_path / "codes.npz").exists(), err


# data=activations (issue 27): a cache that is not one, not finished, damaged, or asked for a hook it lacks.
def activation_cache_mistakes(root: Path) -> list[tuple[list[str], str]]:
    from autoenc_cli.data.activation_cache import read_manifest, write_manifest
    from autoenc_cli.folder_layout import CacheLayout

    from conftest import write_activation_cache

    rows = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float16)
    caches = {name: root / name for name in ("good", "two", "unfinished", "truncated", "reshaped", "nan", "bare")}
    write_activation_cache(caches["good"], {"h.0": [rows[:20], rows[20:]]})
    write_activation_cache(caches["two"], {"h.0": [rows], "h.1": [rows]})
    write_activation_cache(caches["unfinished"], {"h.0": [rows]})
    unfinished = read_manifest(caches["unfinished"])
    unfinished.shards = []
    write_manifest(caches["unfinished"], unfinished)
    write_activation_cache(caches["truncated"], {"h.0": [rows[:20], rows[20:]]})
    shard = CacheLayout(caches["truncated"]).shard("h.0", 1)
    shard.write_bytes(shard.read_bytes()[:-30])
    write_activation_cache(caches["reshaped"], {"h.0": [rows[:20], rows[20:]]})
    np.save(CacheLayout(caches["reshaped"]).shard("h.0", 1), rows[20:, :4])
    write_activation_cache(caches["nan"], {"h.0": [rows[:20], rows[20:]]})
    nan = rows[20:].copy()
    nan[13, 2] = np.nan  # row 33 of the cache
    np.save(CacheLayout(caches["nan"]).shard("h.0", 1), nan)
    caches["bare"].mkdir()
    (root / "notes.txt").write_text("not a cache")
    activations = ["data=activations", "model=sparse_fc"]
    path = lambda name: f"data.path={caches.get(name, root / name)}"  # noqa: E731
    return [
        ([*activations, path("missing")], "is not a folder; give the out= folder of an autoenc harvest"),
        ([*activations, path("notes.txt")], "is not a folder; give the out= folder of an autoenc harvest"),
        ([*activations, path("bare")], "is not an activation cache (it has no manifest.json); write one with"),
        ([*activations, path("unfinished")], "the activation cache holds no finished shard yet"),
        ([*activations, path("good"), "data.hook=h.9"], "data.hook=h.9 is not in the activation cache"),
        ([*activations, path("two")], "holds 2 hooks; name one with data.hook=HOOK (h.0, h.1)"),
        ([*activations, path("good"), "data.hook="], "data.hook='' is not allowed: a hook's module path"),
        ([*activations, path("truncated")], "shard_00001.npy' cannot be read (mmap length is greater than file size)"),
        ([*activations, path("reshaped")], "holds (20, 4) float16, but the manifest lists (20, 8) float16"),
        ([*activations, path("nan")], "NaN or infinite values in 1 of 38 vectors read (first: row 33)"),
        (
            ["data=vectors", path("good")],
            "is an activation cache (autoenc harvest wrote it), not a .npy or .npz; train on it with data=activations",
        ),
        (["data=activations", path("good"), "model=conv"], "needs images of shape C x H x W; the data gives (8,)"),
        ([*activations, path("good"), "loss=bce"], "binary cross-entropy needs targets in [0, 1]"),
    ]


def test_activation_cache_mistakes(tmp_path, monkeypatch, capsys):
    cases = activation_cache_mistakes(tmp_path)
    monkeypatch.chdir(tmp_path)
    for overrides, expected in cases:
        code = run_main(["train", "trainer.epochs=1", *overrides])
        err = capsys.readouterr().err
        assert_one_line_error(code, err)
        assert code == 2 and expected in err, (overrides, err)
    assert not (tmp_path / "outputs").exists()
