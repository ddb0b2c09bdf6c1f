"""Checkpoints: written atomically, read back with ``weights_only=True`` so a file cannot run code."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Optional

import torch

from autoenc_cli.data.tensors import DataBundle
from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import RunLayout
from autoenc_cli.io import atomic_write_bytes, read_json

FORMAT = "autoenc-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load an autoenc checkpoint; anything else (missing, truncated, foreign) is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is "not a checkpoint", whatever the unpickler says
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"'{path}' is not a readable autoenc checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an autoenc checkpoint")
    return state


def _non_default(node: Any) -> dict[str, Any]:
    """A config dataclass as a dict without the fields left at their defaults, so a field added later
    (with a default that keeps the old behaviour) does not change what an old run's config describes."""
    described = {}
    former = getattr(type(node), "former_defaults", {})
    for field in dataclasses.fields(node):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        value = _plain(getattr(node, field.name))
        # A value a field had by default when older checkpoints were written was left out of theirs too.
        if field.name == "name" or (value != _plain(default) and value != former.get(field.name, default)):
            described[field.name] = value
    return described


def _plain(value: Any) -> Any:
    """Lists of dataclasses (layer specs) as plain JSON values, comparable and hashable as text."""
    return json.loads(json.dumps(value, default=_spec_fields))


def _spec_fields(spec: Any) -> dict[str, Any]:
    """A nested spec's fields, without those it lists in ``added_fields`` while they are at their default:
    a field added to a layer spec later does not change the fingerprint of a run saved before it."""
    added = getattr(type(spec), "added_fields", ())
    return {
        field.name: getattr(spec, field.name)
        for field in dataclasses.fields(spec)
        if field.name not in added or getattr(spec, field.name) != field.default
    }


def model_fingerprint(config: Any, input_shape: tuple[int, ...]) -> str:
    """What determines the network's tensors: the model and sparsity options (the values not at their
    defaults) and the input shape."""
    return _hash(_non_default, config, input_shape, version=2)


def _version_1_fingerprint(config: Any, input_shape: tuple[int, ...]) -> str:
    """How checkpoints written before version 2 hashed the model: every field, defaults included."""
    return _hash(dataclasses.asdict, config, input_shape)


def _hash(describe: Any, config: Any, input_shape: tuple[int, ...], **version: int) -> str:
    described = {
        "model": describe(config.model),
        "sparsity": {name: describe(member) for name, member in config.sparsity.items()},
        "input_shape": list(input_shape),
        **version,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def data_fingerprint(data: DataBundle) -> str:
    """A hash of the train and validation images and labels, in split order: any change to the file or
    to the split changes it. A loader whose data is too large to hash whole gives its own (``data=vectors``:
    header, sampled rows, split and statistics; see ``vectors_fingerprint``)."""
    if data.fingerprint is not None:
        return data.fingerprint
    digest = hashlib.sha256()
    for split in (data.train, data.val):
        for tensor in (split.images, split.labels):
            if tensor is not None:
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_checkpoint_belongs(state: dict[str, Any], path: Path, run_dir: Path, config: Optional[Any] = None) -> None:
    """Refuse a checkpoint written by another run than the one in ``run_dir``, or whose config no longer
    describes the model that wrote it (``config``: the checkpoint's own typed config)."""
    fingerprint = state.get("fingerprint") or {}
    run_id = read_json(RunLayout(run_dir).run_json).get("run_id")
    if run_id is not None and fingerprint.get("run_id") != run_id:
        raise UserError(
            f"checkpoint '{path}' was not written by the run in '{run_dir}' (run id "
            f"{fingerprint.get('run_id') or 'unknown'}, the folder's is {run_id}); use that run's own checkpoints"
        )
    written = fingerprint.get("model")
    shape = state.get("input_shape")
    if (
        config is not None
        and written is not None
        and written
        not in (
            model_fingerprint(config, shape),
            _version_1_fingerprint(config, shape),
        )
    ):
        raise UserError(f"checkpoint '{path}': its config no longer describes the model that wrote it")
