"""The one rule for every ``out=`` (autoenc_cli.output_paths): what a file or a folder out= may be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoenc_cli.errors import UserError
from autoenc_cli.output_paths import (
    FolderOutputs,
    check_file_out,
    check_folder_out,
    claimed_folder_out,
    out_path,
)

# A command that writes *.out files into its folder: those are its earlier outputs, anything else is not.
OUTPUTS = FolderOutputs(
    command="demo",
    what="demo outputs",
    earlier="{count} demo outputs",
    folder_for="for demo outputs",
    example="demo_folder",
    is_earlier=lambda folder, file: file.suffix == ".out",
)


def refusal(call) -> str:
    with pytest.raises(UserError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def snapshot(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("value", ["", "  ", None])
def test_an_empty_out_is_refused_naming_the_value(value):
    message = refusal(lambda: out_path(value, "codes.npz"))
    assert message == f"out='{value or ''}' is empty; give a path, e.g. out=codes.npz"


OWNERS = [("run.json", "run"), ("multirun.yaml", "sweep"), ("study.db", "tune study")]


@pytest.mark.parametrize(("marker", "kind"), OWNERS)
def test_nothing_is_written_inside_a_run_sweep_or_study_folder(marker, kind, tmp_path):
    owned = tmp_path / "owned"
    (owned / "checkpoints").mkdir(parents=True)
    (owned / marker).write_text("x")
    (owned / "checkpoints" / "last.pt").write_bytes(b"weights")
    (tmp_path / "link").symlink_to(owned / "checkpoints" / "last.pt")  # a way in through a symbolic link
    before = snapshot(owned)
    for target in (owned / "checkpoints" / "last.pt", owned / "new.json", owned, tmp_path / "link"):
        message = refusal(lambda: check_file_out(target, True, "x.json", " (hint)"))
        where = "is" if target == owned else "is inside"
        assert message == (
            f"out='{target}' {where} the {kind} folder '{owned}', where only that {kind} writes; choose an out= "
            "outside it (hint)"
        )
    for target in (owned / "pngs", owned):
        assert f"the {kind} folder '{owned}'" in refusal(lambda: check_folder_out(target, True, OUTPUTS))
    assert check_folder_out(owned, False, OUTPUTS, own=owned) == []  # its own outputs: a sweep's report
    assert snapshot(owned) == before and not (owned / "pngs").exists()


def test_a_file_out_is_a_new_file_or_replaced_with_overwrite(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    (tmp_path / "folder").mkdir()
    assert refusal(lambda: check_file_out(tmp_path / "mine.txt", False, "x.json")) == (
        f"out='{tmp_path / 'mine.txt'}' already exists; add overwrite=true to replace it, or choose another out="
    )
    assert check_file_out(tmp_path / "mine.txt", True, "x.json") == tmp_path / "mine.txt"
    assert refusal(lambda: check_file_out(tmp_path / "folder", True, "x.json")) == (
        f"out='{tmp_path / 'folder'}' is a folder; give a file name, e.g. out={tmp_path / 'folder' / 'x.json'}"
    )
    assert refusal(lambda: check_file_out(tmp_path / "mine.txt" / "x.json", True, "x.json")) == (
        f"out='{tmp_path / 'mine.txt' / 'x.json'}' cannot be written: '{tmp_path / 'mine.txt'}' is a file, not a folder"
    )
    assert check_file_out(tmp_path / "new" / "x.json", False, "x.json") == tmp_path / "new" / "x.json"
    assert (tmp_path / "mine.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_folder_out_is_never_the_current_folder_or_one_above_it(tmp_path, monkeypatch):
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    cases = {".": "the current folder", str(here): "the current folder", "..": "a folder above"}
    for value, where in {**cases, str(tmp_path): "a folder above", "/": "a folder above"}.items():
        message = refusal(lambda: check_folder_out(out_path(value, "demo_folder"), True, OUTPUTS))
        assert message.startswith(f"out='{value}' is {where}") and message.endswith(
            "; choose a new folder for demo outputs, e.g. out=demo_folder"
        )
    assert check_folder_out(Path("sub"), False, OUTPUTS) == [] and not (here / "sub").exists()


def test_a_folder_out_holds_only_earlier_outputs_and_replaces_them_only_with_overwrite(tmp_path):
    folder = tmp_path / "outs"
    (folder / "deep").mkdir(parents=True)
    (folder / "a.out").write_text("1")
    (folder / "deep" / "b.out").write_text("2")
    assert refusal(lambda: check_folder_out(folder, False, OUTPUTS)) == (
        f"out='{folder}' already holds 2 demo outputs (a.out, ...); add overwrite=true to replace what is there, "
        "or choose another out="
    )
    assert check_folder_out(folder, True, OUTPUTS) == [folder / "a.out", folder / "deep" / "b.out"]
    (folder / "deep" / "notes.txt").write_text("mine")
    assert refusal(lambda: check_folder_out(folder, True, OUTPUTS)) == (
        f"out='{folder}' already holds other files (deep/notes.txt); give demo outputs a new or empty folder, or "
        "one holding only what autoenc demo wrote there (with overwrite=true)"
    )
    (tmp_path / "plain").write_text("mine")
    assert refusal(lambda: check_folder_out(tmp_path / "plain", True, OUTPUTS)) == (
        f"out='{tmp_path / 'plain'}' is a file; give a folder for demo outputs (out=DIR)"
    )


def test_a_failed_write_removes_only_the_folders_the_claim_created(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    for folder in (existing, tmp_path / "new" / "deeper"):
        with pytest.raises(OSError, match="disk full"):
            with claimed_folder_out(folder, False, OUTPUTS, "demo"):
                assert folder.is_dir()
                raise OSError(28, "disk full")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"] and not any(existing.iterdir())
    with claimed_folder_out(tmp_path / "kept", False, OUTPUTS, "demo") as earlier:
        assert earlier == []
        (tmp_path / "kept" / "a.out").write_text("1")
    assert (tmp_path / "kept" / "a.out").read_text() == "1"


def test_the_rule_is_checked_before_the_claim_creates_anything(tmp_path):
    owned = tmp_path / "run"
    owned.mkdir()
    (owned / "run.json").write_text("{}")
    with pytest.raises(UserError, match="is inside the run folder"):
        with claimed_folder_out(owned / "pngs" / "deeper", True, OUTPUTS, "demo"):
            pass
    assert sorted(os.listdir(owned)) == ["run.json"]
