"""``autoenc export run=RUN_DIR out=DIR``: a run's model as a folder to share, without the runner's
training state (optimizer, RNG states, history) and without pickles:

    DIR/model.safetensors   the network's tensors (parameters and buffers), read by any safetensors reader
    DIR/config.json         format marker and version, input shape, code size, phase, epoch, the typed
                            run config as plain JSON, the data fingerprint and where it came from

``autoenc_cli.load_run(DIR)`` (and ``autoenc eval/encode/reconstruct run=DIR``) rebuild the model from
config.json and load the tensors strictly. A greedy stage checkpoint exports that stage's network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import MISSING

from autoenc_cli.errors import UserError
from autoenc_cli.evaluation.commands import UseRunConfig, compose_command


@dataclass
class ExportConfig(UseRunConfig):
    out: str = MISSING
    overwrite: bool = False  # replace an earlier export in out; otherwise it is refused


def is_earlier_export(folder: Path) -> bool:
    """Whether ``folder`` holds what ``autoenc export`` wrote (its config.json carries the format marker)."""
    from autoenc_cli.evaluation.loading import EXPORT_CONFIG, EXPORT_FORMAT
    from autoenc_cli.io import read_json

    return read_json(folder / EXPORT_CONFIG).get("format") == EXPORT_FORMAT


def check_out(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, the run folder or a folder holding it, inside a run folder, or a
    folder holding other files; an earlier export is replaced only with overwrite=true."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out='{out}' is a file; give a folder for model.safetensors and config.json (out=DIR)")
    target, source = out.resolve(), run.resolve()
    if target == source or target in source.parents:
        raise UserError(f"out='{out}' is or holds the run folder '{run}'; an export gets a folder of its own")
    for place in (target, *target.parents):
        if (place / "run.json").is_file():
            raise UserError(f"out='{out}' is inside the run folder '{place}'; an export gets a folder of its own")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_earlier_export(out):
        names = sorted(path.name for path in out.iterdir())
        raise UserError(
            f"out='{out}' already holds other files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
            "an export goes to a new or empty folder (or replaces an earlier export, with overwrite=true)"
        )
    if not overwrite:
        raise UserError(
            f"out='{out}' already holds an export; add overwrite=true to replace it, or choose another out="
        )


def export_config(run: Any, source: Path) -> dict[str, Any]:
    """config.json: everything needed to rebuild ``run.model`` (a TrainedRun), as plain JSON."""
    from autoenc_cli.cli import version
    from autoenc_cli.evaluation.loading import EXPORT_FORMAT, EXPORT_VERSION, is_export, read_export_config
    from autoenc_cli.io import json_ready, read_json

    origin = {
        "run": str(source.resolve()),
        "checkpoint": str(Path(run.checkpoint).resolve()),
        "run_id": read_json(source / "run.json").get("run_id"),
    }
    if is_export(source):  # an export of an export keeps where the model came from
        origin = {**read_export_config(source).get("source", {}), "via": str(source.resolve())}
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "autoenc_version": version(),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input_shape": list(run.model.input_shape),
        "code_dim": run.model.code_dim,
        "phase": run.phase,
        "phase_index": run.phase_index,
        "epoch": run.epoch,
        "config": json_ready(dataclasses.asdict(run.config)),  # typed_config() rebuilds it
        "data_fingerprint": run.data_fingerprint,  # of the train/validation split the run trained on
        "source": origin,  # the run folder and checkpoint it was exported from
    }


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_export(out: Path, model: Any, config: dict[str, Any]) -> None:
    """Write the two files into a temporary sibling folder, then put it in ``out``'s place: a crash leaves
    the earlier export (or nothing), never a torn one; an earlier export is removed only after the new one
    is complete."""
    from safetensors.torch import save_model

    from autoenc_cli.evaluation.loading import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_TENSORS, EXPORT_VERSION
    from autoenc_cli.io import atomic_write_bytes

    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    previous = out.with_name(f".{out.name}.replaced-{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        metadata = {"format": "pt", "autoenc_format": EXPORT_FORMAT, "autoenc_format_version": str(EXPORT_VERSION)}
        # save_model stores tensors that share memory once; force_contiguous: an untied decoder weight is a
        # transposed view, which safetensors stores only contiguous (loading copies values into the layout).
        save_model(model, str(temporary / EXPORT_TENSORS), metadata=metadata, force_contiguous=True)
        os.chmod(temporary / EXPORT_TENSORS, 0o666 & ~_umask())  # safetensors writes it private (0600); share
        _fsync(temporary / EXPORT_TENSORS)
        atomic_write_bytes(temporary / EXPORT_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
        _fsync(temporary)
        if out.exists():
            os.replace(out, previous)
            try:
                os.replace(temporary, out)
            except OSError:
                os.replace(previous, out)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(temporary, out)
        _fsync(out.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def export_run(run_dir: Path, out: Path, checkpoint: str = "best", overwrite: bool = False) -> Any:
    """Export ``run_dir``'s ``checkpoint`` to ``out``; returns the TrainedRun that was written."""
    from autoenc_cli.evaluation.loading import load_run

    check_out(out, run_dir, overwrite)  # before the model is loaded
    run = load_run(run_dir, checkpoint, "cpu")
    write_export(out, run.model, export_config(run, run_dir))
    return run


def main(argv: Sequence[str]) -> int:
    from autoenc_cli.artifacts.console import console

    config = compose_command("export", ExportConfig, argv)
    run = export_run(Path(config.run), Path(config.out), config.checkpoint, config.overwrite)
    tensors = run.model.state_dict()
    size = sum(tensor.numel() for tensor in tensors.values())
    console.print(
        f"exported {Path(run.checkpoint).name} (phase {run.phase}, epoch {run.epoch}, code size "
        f"{run.model.code_dim}, {len(tensors)} tensors, {size:,} values) to {Path(config.out).absolute()}",
        soft_wrap=True,
    )
    return 0
