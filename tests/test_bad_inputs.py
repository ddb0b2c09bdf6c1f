"""A battery of user mistakes through the real CLI: each ends in one line, a non-zero exit, no traceback."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import TINY, run_cli, run_main
from test_config import bounded_knobs, out_of_range_values


def every_knob_out_of_range() -> list[list[str]]:
    return [
        [*choice, f"{key}={value}"] for choice, key, bounds in bounded_knobs() for value in out_of_range_values(bounds)
    ]


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
CASES = MALFORMED + WRONG_TYPES + UNKNOWN + CHOICES + every_knob_out_of_range()


def assert_one_line_error(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("autoenc: error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("overrides", CASES, ids=lambda overrides: " ".join(overrides))
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
