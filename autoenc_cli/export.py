"""``autoenc export run=RUN_DIR out=DIR``: a run's model as a folder to share, without the runner's
training state (optimizer, RNG states, history) and without pickles:

    DIR/model.safetensors   the network's tensors (parameters and buffers), read by any safetensors reader
    DIR/config.json         format marker and version, input shape, code size, phase, epoch, the typed
                            run config as plain JSON, the data fingerprint and where it came from (with
                            the run's status and whether the checkpoint was taken mid-epoch); for a
                            normalised data=vectors run, its normalisation statistics ("normalization")

``autoenc_cli.load_run(DIR)`` (and ``autoenc eval/encode/reconstruct run=DIR``) rebuild the model from
config.json and load the tensors strictly. A greedy stage checkpoint exports that stage's network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import MISSING

from autoenc_cli.errors import UserError
from autoenc_cli.evaluation.commands import UseRunConfig, compose_command
from autoenc_cli.folder_layout import EXPORT_CONFIG, EXPORT_TENSORS, SAELENS_CONFIG, SAELENS_TENSORS, RunLayout
from autoenc_cli.output_paths import (
    FolderOutputs,
    check_folder_out,
    claimed_folder_out,
    out_path,
    refuse_current_folder,
)
from autoenc_cli.schema import choice


@dataclass
class ExportConfig(UseRunConfig):
    out: str = MISSING  # the export folder: new, empty, or an earlier export (with overwrite=true)
    overwrite: bool = False  # replace an earlier export in out; otherwise it is refused
    # autoenc: model.safetensors + config.json (autoenc_cli.load_run reads it); saelens: cfg.json +
    # sae_weights.safetensors, the folder SAELens's SAE.load_from_disk reads (a sparse autoencoder)
    format: str = choice("autoenc", ("autoenc", "saelens"))


# The two files each format writes: (tensors, config).
FORMAT_FILES = {"autoenc": (EXPORT_TENSORS, EXPORT_CONFIG), "saelens": (SAELENS_TENSORS, SAELENS_CONFIG)}
# A file's staged copy beside it (as autoenc_cli.io names them: .NAME.PID.tmp), left where an export was killed.
STAGED = re.compile(
    r"\.(" + "|".join(re.escape(name) for files in FORMAT_FILES.values() for name in files) + r")\.\d+\.tmp"
)


def _tensors_metadata(path: Path) -> dict[str, str]:
    """model.safetensors' header metadata; empty when the file is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # any file may stand there: unreadable means not an export's
        return {}


def is_export_file(folder: Path, file: Path) -> bool:
    """Whether ``file`` is one ``autoenc export`` wrote into ``folder``: its config.json or model.safetensors,
    each carrying the format marker, or a staged copy a killed export left."""
    from autoenc_cli.evaluation.loading import EXPORT_FORMAT
    from autoenc_cli.io import read_json

    if file.parent != folder or file.is_symlink():
        return False
    from autoenc_cli.saelens import SAELENS_FORMAT

    if file.name == EXPORT_CONFIG:
        return read_json(file).get("format") == EXPORT_FORMAT
    if file.name == SAELENS_CONFIG:
        metadata = read_json(file).get("metadata")
        return isinstance(metadata, dict) and metadata.get("autoenc_format") == SAELENS_FORMAT
    if file.name in (EXPORT_TENSORS, SAELENS_TENSORS):
        return _tensors_metadata(file).get("autoenc_format") in (EXPORT_FORMAT, SAELENS_FORMAT)
    return STAGED.fullmatch(file.name) is not None


EXPORT_OUTPUTS = FolderOutputs(
    command="export",
    what="an export",
    earlier="an export",
    folder_for=f"for {EXPORT_TENSORS} and {EXPORT_CONFIG} (or {SAELENS_TENSORS} and {SAELENS_CONFIG})",
    example="my_model",
    is_earlier=is_export_file,
)


def check_out(out: Path, run: Path, overwrite: bool) -> list[Path]:
    """The shared out= rule (autoenc_cli.output_paths) for an export's folder, which is also never the run
    folder or a folder holding it; returns the earlier export's files there (replaced with overwrite=true)."""
    refuse_current_folder(out, EXPORT_OUTPUTS)
    target, source = out.resolve(), run.resolve()
    if target == source or target in source.parents:
        raise UserError(f"out='{out}' is or holds the run folder '{run}'; an export gets a folder of its own")
    return check_folder_out(out, overwrite, EXPORT_OUTPUTS)


def export_config(run: Any, source: Path) -> dict[str, Any]:
    """config.json: everything needed to rebuild ``run.model`` (a TrainedRun), as plain JSON."""
    from autoenc_cli.cli import version
    from autoenc_cli.evaluation.loading import EXPORT_FORMAT, EXPORT_VERSION, is_export, read_export_config
    from autoenc_cli.io import json_ready, read_json

    status = read_json(RunLayout(source).metrics_json).get("status")
    origin = {
        "run": str(source.resolve()),
        "checkpoint": str(Path(run.checkpoint).resolve()),
        "run_id": read_json(RunLayout(source).run_json).get("run_id"),
        # completed, failed, interrupted (metrics.json); unknown without one: still training, or killed
        "status": status if isinstance(status, str) else "unknown",
        "mid_epoch": run.step_in_epoch > 0,  # the checkpoint was taken inside an epoch (an interruption's)
        "step_in_epoch": run.step_in_epoch,
    }
    if is_export(source):  # an export of an export keeps where the model came from
        origin = {**read_export_config(source).get("source", {}), "via": str(source.resolve())}
    normalisation = run.input_normalisation()  # data=vectors: what raw vectors need before the model
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
        **({"normalization": normalisation.as_json()} if normalisation is not None else {}),
    }


def source_note(source: dict[str, Any]) -> str | None:
    """One line when the exported weights are not a finished run's: the run failed or was interrupted, or
    the checkpoint was taken mid-epoch."""
    reasons = []
    if source.get("status", "completed") != "completed":
        reasons.append(f"the source run's status is {source['status']}")
    if source.get("mid_epoch"):
        reasons.append(f"its checkpoint was taken mid-epoch ({source.get('step_in_epoch')} steps into an epoch)")
    if not reasons:
        return None
    return f"note: {' and '.join(reasons)}; {EXPORT_CONFIG}'s source says so"


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


def _write_staged(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def write_export(
    out: Path, model: Any, config: dict[str, Any], overwrite: bool = False, export_format: str = "autoenc"
) -> None:
    """Write the two files into ``out``, claimed for this process: a second export to the same folder is
    refused in one line and touches nothing. Both files are staged beside their places first (a failure
    there leaves an earlier export as it was); then the earlier config.json goes, model.safetensors takes its
    place and config.json comes last, so a crash never leaves a folder that loads as a mix of two exports.
    ``out`` itself is never removed or renamed: a folder this call did not create stays (the current folder
    above all); one it created is removed again if the export fails."""
    tensors_name, config_name = FORMAT_FILES[export_format]
    tensors, settings = out / tensors_name, out / config_name
    staged_tensors = out / f".{tensors_name}.{os.getpid()}.tmp"
    staged_config = out / f".{config_name}.{os.getpid()}.tmp"
    with claimed_folder_out(out, overwrite, EXPORT_OUTPUTS, "model export") as earlier:
        try:
            for leftover in earlier:
                if STAGED.fullmatch(leftover.name):  # a killed export's staged copy
                    leftover.unlink()
            _save_tensors(staged_tensors, model, export_format)
            os.chmod(staged_tensors, 0o666 & ~_umask())  # safetensors writes it private (0600); share
            _fsync(staged_tensors)
            _write_staged(staged_config, (json.dumps(config, indent=2) + "\n").encode())
            # Until the new config file is in place, out is no export at all (of either format: an earlier one in
            # the other format loses its config first, then its tensors, so the folder never holds both).
            for config_file in {settings, *(out / files[1] for files in FORMAT_FILES.values())}:
                config_file.unlink(missing_ok=True)
            os.replace(staged_tensors, tensors)
            os.replace(staged_config, settings)
            for leftover in earlier:
                if leftover.name not in (tensors_name, config_name):
                    leftover.unlink(missing_ok=True)
            _fsync(out)
        finally:
            staged_tensors.unlink(missing_ok=True)
            staged_config.unlink(missing_ok=True)


def _save_tensors(path: Path, tensors: Any, export_format: str) -> None:
    """``tensors`` (the model, or for SAELens a dict of tensors) as a safetensors file with autoenc's marker."""
    from safetensors.torch import save_file, save_model

    from autoenc_cli.evaluation.loading import EXPORT_FORMAT, EXPORT_VERSION
    from autoenc_cli.saelens import SAELENS_FORMAT

    if export_format == "saelens":
        save_file(tensors, str(path), metadata={"format": "pt", "autoenc_format": SAELENS_FORMAT})
        return
    metadata = {"format": "pt", "autoenc_format": EXPORT_FORMAT, "autoenc_format_version": str(EXPORT_VERSION)}
    # save_model stores tensors that share memory once; force_contiguous: an untied decoder weight is a
    # transposed view, which safetensors stores only contiguous (loading copies values into the layout).
    save_model(tensors, str(path), metadata=metadata, force_contiguous=True)


def saelens_export(run: Any, source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's SAE in SAELens's format: its tensors (normalisation and biases folded in) and cfg.json."""
    from autoenc_cli.saelens import fold, saelens_config

    sae = fold(run.model, run.input_normalisation())
    return sae.tensors(), saelens_config(sae, run, exported_epoch_metrics(run, source))


def exported_epoch_metrics(run: Any, source: Path) -> dict[str, float]:
    """l0 and dead_fraction on validation (history.csv's row) of the epoch whose checkpoint is exported; {}
    when the folder has no history (an export of an export)."""
    import csv

    history = RunLayout(source).history_csv
    if _is_export(source) or not history.is_file():
        return {}
    with open(history, newline="") as handle:
        rows = [
            row for row in csv.DictReader(handle) if (row.get("stage"), row.get("epoch")) == (run.phase, str(run.epoch))
        ]
    return {key: float(rows[-1][key]) for key in ("l0", "dead_fraction") if rows and rows[-1].get(key)}


def _is_export(source: Path) -> bool:
    from autoenc_cli.evaluation.loading import is_export

    return is_export(source)


def export_run(
    run_dir: Path, out: Path, checkpoint: str = "best", overwrite: bool = False, export_format: str = "autoenc"
) -> Any:
    """Export ``run_dir``'s ``checkpoint`` to ``out`` in ``export_format``; returns the TrainedRun that was written."""
    from autoenc_cli.evaluation.loading import load_run, refuse_non_finite

    check_out(out, run_dir, overwrite)  # before the model is loaded
    run = load_run(run_dir, checkpoint, "cpu")
    refuse_non_finite(run.model, run.checkpoint)  # an export of NaN weights would be refused where it is loaded
    config = export_config(run, run_dir)
    if export_format == "saelens":
        tensors, saelens = saelens_export(run, run_dir)
        write_export(out, tensors, saelens, overwrite, export_format)
    else:
        write_export(out, run.model, config, overwrite)
    note = source_note(config["source"])
    if note is not None:
        from autoenc_cli.artifacts.console import console

        console.print(note, soft_wrap=True)
    return run


def main(argv: Sequence[str]) -> int:
    from autoenc_cli.artifacts.console import console

    config = compose_command("export", ExportConfig, argv)
    out = out_path(config.out, EXPORT_OUTPUTS.example)
    run = export_run(Path(config.run), out, config.checkpoint, config.overwrite, config.format)
    if config.format == "saelens":
        from autoenc_cli.io import read_json

        saelens = read_json(out / SAELENS_CONFIG)
        console.print(
            f"exported {Path(run.checkpoint).name} as a SAELens {saelens['architecture']} SAE (d_in {saelens['d_in']}, "
            f"d_sae {saelens['d_sae']}) to {out.absolute()}; load it with: from sae_lens import SAE; "
            f"SAE.load_from_disk('{out}')",
            soft_wrap=True,
        )
        return 0
    tensors = run.model.state_dict()
    size = sum(tensor.numel() for tensor in tensors.values())
    console.print(
        f"exported {Path(run.checkpoint).name} (phase {run.phase}, epoch {run.epoch}, code size "
        f"{run.model.code_dim}, {len(tensors)} tensors, {size:,} values) to {out.absolute()}",
        soft_wrap=True,
    )
    return 0
