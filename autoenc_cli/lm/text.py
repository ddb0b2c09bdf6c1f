"""Text for a capture: where documents come from, and how they become fixed-length token contexts.

``text=`` is a ``.txt`` file (one document), a ``.jsonl`` file (one document per line: a JSON string, or
an object whose ``text`` field holds it), a folder of them (every ``.txt`` and ``.jsonl`` under it), or a
source that ships with Python itself, for offline demos:

- ``stdlib``: the standard library's Python source files (code, comments and docstrings; about 6 million
  SmolLM2 tokens), one document per file;
- ``pydoc``: the documentation topics of ``pydoc_data`` (``help('topics')``; prose, about 115 thousand
  tokens), one document per topic.

Files are visited in a seeded shuffled order (documents inside a file in their order); the stream of
token ids is each document's tokens followed by the separator (the beginning-of-sequence token); each
context is that token followed by the next ``context_size - 1`` ids of the stream. The first contexts are
held out (scored, never cached): held-out and cached text never share a token.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from autoenc_cli.errors import ConfigError, DataError

SUFFIXES = (".txt", ".jsonl")
BUILTIN = {
    "stdlib": "the Python standard library's source files",
    "pydoc": "Python's documentation topics (pydoc_data)",
}
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class TextFile:
    """One file of a text source, or a built-in source's one part (``reader`` gives its documents)."""

    name: str  # as the fingerprint names it: relative to the source
    path: Path | None
    reader: Callable[[], Iterator[str]]


def _stdlib_files() -> list[TextFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path for path in root.rglob("*.py") if "site-packages" not in path.parts and "dist-packages" not in path.parts
    )
    return [TextFile(str(path.relative_to(root)), path, _whole_file(path)) for path in files]


def _pydoc_files() -> list[TextFile]:
    from pydoc_data import topics

    def read() -> Iterator[str]:
        for key in sorted(topics.topics):
            yield topics.topics[key]

    return [TextFile(f"pydoc_data.topics (Python {sys.version.split()[0]})", None, read)]


def _whole_file(path: Path) -> Callable[[], Iterator[str]]:
    def read() -> Iterator[str]:
        yield path.read_text(encoding="utf-8", errors="replace")

    return read


def _jsonl_documents(path: Path) -> Callable[[], Iterator[str]]:
    def read() -> Iterator[str]:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _jsonl_text(line, path, number)

    return read


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        value: Any = json.loads(line)
    except ValueError:
        raise DataError(f"text='{path}' line {number} is not JSON; a .jsonl holds one JSON value per line") from None
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str):
        raise DataError(
            f"text='{path}' line {number} holds no text: each line must be a JSON string or an object with "
            "a 'text' string"
        )
    return value


def _user_files(path: Path) -> list[TextFile]:
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ConfigError("text", str(path), "a .txt or .jsonl file, a folder of them, stdlib or pydoc", True)
        found, root = [path], path.parent
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        root = path
        if not found:
            raise DataError(f"text='{path}' holds no .txt or .jsonl file")
    else:
        raise ConfigError(
            "text", str(path), f"an existing .txt/.jsonl file or folder, or one of: {', '.join(BUILTIN)}", True
        )
    return [
        TextFile(str(p.relative_to(root)), p, _jsonl_documents(p) if p.suffix == ".jsonl" else _whole_file(p))
        for p in found
    ]


@dataclass(frozen=True)
class TextSource:
    given: str  # text= as the user wrote it
    files: tuple[TextFile, ...]

    def fingerprint(self) -> str:
        """SHA-256 of every file's name and bytes (a built-in's documents), read a block at a time."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(f"{file.name}\0".encode())
            if file.path is None:
                for document in file.reader():
                    digest.update(document.encode())
                continue
            with file.path.open("rb") as handle:
                while block := handle.read(READ_BYTES):
                    digest.update(block)
        return digest.hexdigest()

    def documents(self, seed: int) -> Iterator[str]:
        """Every document, files in a seeded shuffled order."""
        order = np.random.default_rng(seed).permutation(len(self.files))
        for index in order:
            yield from self.files[index].reader()

    def describe(self) -> dict[str, Any]:
        source = self.given if self.given in BUILTIN else str(Path(self.given).expanduser().resolve())
        return {"source": source, "files": len(self.files)}


def text_source(given: str) -> TextSource:
    if given in BUILTIN:
        files = _stdlib_files() if given == "stdlib" else _pydoc_files()
    else:
        files = _user_files(Path(given).expanduser())
    return TextSource(given, tuple(files))


def token_stream(documents: Iterator[str], tokenizer: Any, separator: int) -> Iterator[np.ndarray]:
    """Each document's token ids (no special tokens added), then the separator."""
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        if ids:
            yield np.asarray([*ids, separator], dtype=np.int64)


def contexts(pieces: Iterator[np.ndarray], context_size: int, bos: int, block: int = 256) -> Iterator[np.ndarray]:
    """Contexts (``context_size`` ids each): ``bos`` then the next ``context_size - 1`` ids of the stream,
    cut ``block`` at a time. A last partial context is dropped (every context has the same length)."""
    body = context_size - 1
    pending: list[np.ndarray] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held >= body * block:
            joined = np.concatenate(pending)
            count = held // body
            yield from _with_bos(joined[: body * count].reshape(count, body), bos)
            pending, held = [joined[body * count :]], held - body * count
    if held >= body:
        joined = np.concatenate(pending)
        count = held // body
        yield from _with_bos(joined[: body * count].reshape(count, body), bos)


def _with_bos(bodies: np.ndarray, bos: int) -> np.ndarray:
    return np.concatenate([np.full((len(bodies), 1), bos, dtype=np.int64), bodies], axis=1)


def take(contexts: Iterator[np.ndarray], count: int) -> np.ndarray:
    """The next ``count`` contexts (fewer where the text ends) as one (n, context_size) array."""
    taken = [row for _, row in zip(range(count), contexts)]
    return np.stack(taken) if taken else np.empty((0, 0), dtype=np.int64)
