"""One writer per folder: a run, a sweep, a study or an export is claimed by the process that writes it.

A claim creates the folder when it is missing (remembering which folders it made, so a clean-up removes
only those) and holds an exclusive ``flock`` on the folder itself for as long as the process works there:
no lock file is left behind, and the lock ends with the process, however it ends (a hard kill included).
A second process that asks for the same folder is refused at once, before it writes anything.
Where ``fcntl`` does not exist (Windows), folders are created but not locked.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Optional

from autoenc_cli.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FolderBusy(UserError):
    """Another process holds the folder."""


@dataclass
class FolderClaim:
    path: Path  # absolute
    what: str
    created: list[Path] = field(default_factory=list)  # the folders this claim made, outermost first
    descriptor: Optional[int] = None
    holds: int = 1  # nested claims of the same folder in this process
    before: dict[str, tuple[int, int]] = field(default_factory=dict)  # what the folder held when claimed
    disposable: Collection[str] = ()  # top-level names whose appearance does not mean work started
    appended: Collection[str] = ()  # files only ever appended to (a log), cut back by ``undo``

    def release(self) -> None:
        """Give the folder up (the last of nested claims unlocks it)."""
        self.holds -= 1
        if self.holds > 0:
            return
        _held.pop(self.path, None)
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the descriptor ends the flock
            self.descriptor = None

    def made_here(self) -> bool:
        """Whether this claim created the folder itself (so removing it removes nothing of the user's)."""
        return self.path in self.created

    def undo(self) -> bool:
        """Put the folder back as it was when claimed, when everything added or changed since lies in
        ``disposable`` (top-level names) and every changed file is one of ``appended`` that only grew (it
        is cut back to its old length). Folders the claim made go too. False, touching nothing, otherwise."""
        disposable, appended = self.disposable, self.appended
        now = _contents(self.path)
        added = [name for name in now if name not in self.before]
        changed = [name for name in now if name in self.before and now[name] != self.before[name]]
        gone = [name for name in self.before if name not in now]
        if gone or any(name.split("/")[0] not in disposable for name in added + changed):
            return False
        grown = [name for name in changed if now[name][0] >= 0]  # files; a folder's own entry never changes
        if any(name not in appended or now[name][0] < self.before[name][0] for name in grown):
            return False
        for name in sorted(added, key=lambda name: name.count("/"), reverse=True):
            _remove(self.path / name)
        for name in grown:
            os.truncate(self.path / name, self.before[name][0])
        _remove_created(self.created)
        return True


_held: dict[Path, FolderClaim] = {}


def held(path: Path) -> Optional[FolderClaim]:
    """This process's claim on ``path``, if it holds one."""
    return _held.get(Path(path).absolute())


def claim_folder(
    path: Path, what: str = "run", disposable: Collection[str] = (), appended: Collection[str] = ()
) -> FolderClaim:
    """Create ``path`` if needed and lock it for this process; a folder another process holds is refused
    in one line. Claiming a folder this process already holds nests (``release`` as often as claimed).
    ``disposable`` and ``appended`` say what ``undo`` may take back."""
    path = Path(path).absolute()
    if path in _held:
        _held[path].holds += 1
        return _held[path]
    if path.exists() and not path.is_dir():
        raise UserError(f"'{path}' is a file; a {what} needs a folder there")
    try:
        created = _make_folders(path)
    except OSError as error:  # a file in the way, no permission
        raise UserError(f"cannot write or read '{error.filename}': {error.strerror or error}") from None
    claim = FolderClaim(path, what, created, before=_contents(path), disposable=disposable, appended=appended)
    if fcntl is not None:
        try:
            claim.descriptor = _lock(path, what)
        except BaseException:
            _remove_created(created)
            raise
    _held[path] = claim
    return claim


def _make_folders(path: Path) -> list[Path]:
    missing = [folder for folder in (*reversed(path.parents), path) if not folder.exists()]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:  # another process made it in the meantime: it is not ours to remove
            pass
    return created


def _lock(path: Path, what: str) -> int:
    """An exclusive, non-blocking flock on the folder; retried when the folder was replaced while opening
    (another process removed it and made it anew), so the lock is always on the folder at ``path``."""
    for _ in range(5):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise FolderBusy(
                f"'{path}' is in use by another autoenc process (a {what} is being written there); wait for it to "
                "end, or choose another folder"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)
        path.mkdir(parents=True, exist_ok=True)
    raise FolderBusy(f"'{path}' keeps being replaced by another process; choose another folder")


def _contents(path: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``path`` by relative name: (size, modification time) for files, (-1, 0) for
    folders (whose times change with their entries)."""
    contents: dict[str, tuple[int, int]] = {}
    for root, folders, files in os.walk(path):
        for name in folders + files:
            entry = Path(root) / name
            relative = entry.relative_to(path).as_posix()
            if name in folders and not entry.is_symlink():
                contents[relative] = (-1, 0)
            else:
                status = entry.lstat()
                contents[relative] = (status.st_size, status.st_mtime_ns)
    return contents


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _remove_created(created: list[Path]) -> None:
    """Remove the folders a claim made, innermost first, each only while empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def remove_created_folders(claim: FolderClaim) -> None:
    """After the claimed folder's own files are gone: remove the (now empty) folders the claim created."""
    _remove_created(claim.created)


@contextmanager
def claims_end_with_block() -> Iterator[Callable[[], list[FolderClaim]]]:
    """The claims made inside the block end with it (a command run in-process, as the tests run them,
    leaves none held). It yields a function listing them, for a clean-up before they end."""
    earlier = set(_held)

    def made() -> list[FolderClaim]:
        return [claim for path, claim in _held.items() if path not in earlier]

    try:
        yield made
    finally:
        for claim in made():
            claim.holds = 1
            claim.release()


def close_log_files_in(folder: Path) -> None:
    """Close and detach the log handlers writing into ``folder`` (train.log), so it can be removed and no later
    record in this process tries to reopen a file there."""
    folder = folder.absolute()
    known = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    loggers = [logging.getLogger(), *known]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and folder in Path(handler.baseFilename).absolute().parents:
                handler.close()
                logger.removeHandler(handler)


def put_back(claim: Any) -> None:
    """Undo what this process put in a folder it claimed, when no work started there (its log closed first)."""
    close_log_files_in(claim.path)
    claim.undo()


def remove_if_nothing_started(folder: Path, nothing_started: Collection[str]) -> None:
    """Remove a folder that holds only ``nothing_started`` entries (no work started there), and the
    parents made for it that are now empty, up to the current folder."""
    if folder.is_dir() and {entry.name for entry in folder.iterdir()} <= set(nothing_started):
        close_log_files_in(folder)
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.absolute().parents:
            if parent == Path.cwd().absolute():
                break
            try:
                parent.rmdir()  # only when empty: outputs/runs of a first, refused command
            except OSError:
                break
