"""Where a command may write: the one rule for every ``out=`` (eval, encode, reconstruct, export, and
``autoenc report --out``).

Every ``out=`` is refused when it is empty, when a file stands where a folder of its path should be, or when
it lies inside a run folder (run.json), a sweep folder (multirun.yaml) or a tune study folder (study.db):
only that run, sweep or study writes there, its own documented outputs (``autoenc eval`` without ``out=``
writes the run's eval.json; a sweep's report rebuilds in the sweep folder).

A file ``out=`` is refused when it is a folder, and when it exists unless ``overwrite=true``.
A folder ``out=`` is refused when it is a file, the current folder or one above it, or when it holds
anything the command did not write there earlier; what the command wrote there earlier is replaced only with
``overwrite=true``. Each command names its own earlier outputs (a ``FolderOutputs``); the rule is here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import MULTIRUN_YAML, RUN_JSON, STUDY_DB

# The files that say whose a folder is: nothing but that run, sweep or study writes inside it.
OWNER_MARKERS = ((RUN_JSON, "run"), (MULTIRUN_YAML, "sweep"), (STUDY_DB, "tune study"))


@dataclass(frozen=True)
class FolderOutputs:
    """What a command writes into a folder ``out=``, for the refusals and for telling its files apart."""

    command: str  # the command that writes there: "export"
    what: str  # what the folder receives, as a refusal names it: "an export", "PNG reconstructions"
    earlier: str  # what an earlier call left there, of {count} files: "an export", "{count} reconstructions"
    folder_for: str  # why out= must be a folder: "for model.safetensors and config.json"
    example: str  # a good out=, suggested in refusals
    is_earlier: Callable[[Path, Path], bool]  # (folder, file inside it): did this command write that file?
    overwrite: str = "overwrite=true"  # how the command is told to replace them


def out_path(value: Union[str, Path, None], example: str) -> Path:
    """``out=`` as a path; an empty value is refused (``Path('')`` would silently mean the current folder)."""
    if value is None or not str(value).strip():
        raise UserError(f"out='{value or ''}' is empty; give a path, e.g. out={example}")
    return Path(value)


def owner_kind(folder: Path) -> Optional[str]:
    """``run``, ``sweep`` or ``tune study`` when ``folder`` is one (holds its marker file), else None."""
    return next((kind for marker, kind in OWNER_MARKERS if (Path(folder) / marker).is_file()), None)


def owner_of(path: Path) -> Optional[tuple[Path, str]]:
    """The run, sweep or study folder that is ``path`` or holds it (through symbolic links too), and its kind."""
    for candidate in dict.fromkeys((Path(os.path.abspath(path)), Path(path).resolve())):
        for place in (candidate, *candidate.parents):
            kind = owner_kind(place)
            if kind is not None:
                return place, kind
    return None


def refuse_inside_owned(path: Path, hint: str = "") -> None:
    """Refuse ``path`` when it is or lies inside a run, sweep or study folder."""
    found = owner_of(path)
    if found is None:
        return
    place, kind = found
    where = "is" if Path(path).resolve() == place.resolve() else "is inside"
    raise UserError(
        f"out='{path}' {where} the {kind} folder '{place}', where only that {kind} writes; choose an out= "
        f"outside it{hint}"
    )


def refuse_file_in_the_way(path: Path) -> None:
    """A file where one of ``path``'s folders should be (out=notes.txt/codes.npz) is refused, not crashed on."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"out='{path}' cannot be written: '{parent}' is a file, not a folder")
            return


def check_file_out(path: Path, overwrite: bool, example: str, hint: str = "") -> Path:
    """The rule for a file ``out=``; ``example`` is a file name to suggest, ``hint`` ends the inside-a-run
    refusal (what the command writes there itself). Returns ``path``."""
    refuse_file_in_the_way(path)
    refuse_inside_owned(path, hint)
    if path.is_dir():
        raise UserError(f"out='{path}' is a folder; give a file name, e.g. out={path / example}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"out='{path}' already exists; add overwrite=true to replace it, or choose another out=")
    return path


@contextmanager
def never_replacing(path: Path) -> Iterator[None]:
    """Around the write of a file ``out=`` made with ``replace=False``: a file that another process wrote
    there since the check is left as it is, and the command says so in one line."""
    try:
        yield
    except FileExistsError:
        raise UserError(
            f"out='{path}' was written by another process meanwhile; it is left as it is (add overwrite=true to "
            "replace it, or choose another out=)"
        ) from None


def refuse_current_folder(path: Path, outputs: FolderOutputs) -> None:
    """The current folder and the folders above it are never an output folder: a command that fills or
    replaces its out= must not take the user's working folder with it."""
    target, here = path.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        where = "the current folder" if target == here else "a folder above the current one"
        raise UserError(f"out='{path}' is {where}; choose a new folder for {outputs.what}, e.g. out={outputs.example}")


def files_under(folder: Path) -> Iterator[Path]:
    """Every file (and symbolic link) under ``folder``, a folder's own before its subfolders', by name."""
    for root, folders, files in os.walk(folder):
        folders.sort()
        links = [name for name in folders if (Path(root) / name).is_symlink()]  # os.walk does not enter them
        yield from (Path(root) / name for name in sorted(files + links))


def sort_files(folder: Path, outputs: FolderOutputs) -> tuple[list[Path], list[Path]]:
    """The files under ``folder``: the command's earlier outputs, and the first few others (a folder of
    the user's is not read to its end to say that it is one)."""
    earlier: list[Path] = []
    others: list[Path] = []
    for file in files_under(folder):
        (earlier if outputs.is_earlier(folder, file) else others).append(file)
        if len(others) > 3:
            break
    return earlier, others


def _names(folder: Path, files: list[Path], shown: int) -> str:
    names = [file.relative_to(folder).as_posix() for file in files]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def check_folder_out(path: Path, overwrite: bool, outputs: FolderOutputs, own: Optional[Path] = None) -> list[Path]:
    """The rule for a folder ``out=``; returns the earlier outputs it holds (to replace). ``own``: the run,
    sweep or study folder whose own outputs the command rebuilds, allowed as out=."""
    if path.exists() and not path.is_dir():
        raise UserError(f"out='{path}' is a file; give a folder {outputs.folder_for} (out=DIR)")
    refuse_file_in_the_way(path)
    if own is not None and path.resolve() == Path(own).resolve():
        return []
    refuse_current_folder(path, outputs)
    refuse_inside_owned(path)
    files, others = sort_files(path, outputs)
    if others:
        raise UserError(
            f"out='{path}' already holds other files ({_names(path, others, 3)}); give {outputs.what} a new or empty "
            f"folder, or one holding only what autoenc {outputs.command} wrote there (with {outputs.overwrite})"
        )
    if files and not overwrite:
        earlier = outputs.earlier.format(count=len(files))
        raise UserError(
            f"out='{path}' already holds {earlier} ({_names(path, files, 1)}); add {outputs.overwrite} to replace "
            "what is there, or choose another out="
        )
    return files


@contextmanager
def claimed_folder_out(path: Path, overwrite: bool, outputs: FolderOutputs, what: str) -> Iterator[list[Path]]:
    """Claim the folder ``out=`` for this process (creating it when missing), check it again under the claim
    and yield the earlier outputs to replace. A second process writing the same folder is refused in one
    line (``FolderBusy``) before it touches anything; on failure the folders the claim created are removed
    again once empty (the caller removes what it wrote first)."""
    from autoenc_cli.folder_lock import claim_folder, remove_created_folders

    check_folder_out(path, overwrite, outputs)  # before the claim creates any folder
    claim = claim_folder(path, what)
    try:
        yield check_folder_out(path, overwrite, outputs)
    except BaseException:
        remove_created_folders(claim)
        raise
    finally:
        claim.release()
