"""Load a trained run from its folder, without its data: the model rebuilt from the saved config and
the input shape stored in the checkpoint (as nanoGPT's sample.py rebuilds a GPT from model_args).

    from autoenc_cli import load_run
    run = load_run("outputs/runs/<run>")          # or checkpoint="last" | "stage1" | a .pt path
    codes, images = run.encode(x), run.reconstruct(x)

``load_run`` also takes a folder written by ``autoenc export`` (model.safetensors + config.json): the
same model, rebuilt from config.json, with its tensors read by safetensors (nothing pickled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from autoenc_cli.build import build_model, resolve_device
from autoenc_cli.data.files import checked_images
from autoenc_cli.data.tensors import DataBundle
from autoenc_cli.errors import ConfigError, DataError, UserError
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema import TrainConfig
from autoenc_cli.schema.resolve import typed_config
from autoenc_cli.training.checkpoint import check_checkpoint_belongs, data_fingerprint, load_checkpoint
from autoenc_cli.training.metrics import active_threshold
from autoenc_cli.training.parts import validation_noise_generator


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """A checkpoint's name in the run's checkpoints/ (best, last, stage1, finetune, ...) or a .pt path."""
    if not run_dir.is_dir():
        raise UserError(f"run='{run_dir}' is not a run folder")
    named = run_dir / "checkpoints" / f"{checkpoint}.pt"
    path = named if "/" not in checkpoint and not checkpoint.endswith(".pt") else Path(checkpoint)
    if not path.is_file() and ((run_dir / "study.db").is_file() or (run_dir / "multirun.yaml").is_file()):
        # A tune study or a grid sweep holds runs, one per trial or job (0/, 1/, ...): name one of them.
        from autoenc_cli.io import read_json

        jobs = sorted((p.name for p in run_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
        if (run_dir / "study.db").is_file():
            best = (read_json(run_dir / "best.json") or {}).get("best") or [{}]
            example = best[0].get("run") or (jobs[0] if jobs else "<trial>")
            what, which = "a tune study folder (study.db)", f"one of its trials, e.g. run={run_dir / example}"
        else:
            what, which = (
                "a sweep folder (multirun.yaml)",
                f"one of its jobs, e.g. run={run_dir / (jobs or ['<job>'])[0]}",
            )
        raise UserError(f"'{run_dir}' is {what}, not a run; give {which}")
    if not path.is_file():
        raise UserError(
            f"no checkpoint at '{path}'; the run folder needs checkpoints/{checkpoint}.pt "
            "(checkpoint=best|last|stage1|...|finetune|PATH)"
        )
    return path


@dataclass
class TrainedRun:
    """A trained model in evaluation mode, with the config it was trained with."""

    model: Autoencoder  # a stage checkpoint gives that stage's network, with its own code size
    config: TrainConfig
    checkpoint: Path
    phase: str
    epoch: int
    data_fingerprint: Optional[str] = None  # of the train/validation split the run trained on
    phase_index: int = 0  # the phase's place in the run's schedule (greedy: stage1 is 0, ..., finetune last)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _images(self, images: Any) -> torch.Tensor:
        """Images checked as the command line checks them (type, range, NaN), one image or a batch."""
        shape = self.model.input_shape
        if len(shape) == 1:  # data=vectors: the model takes them normalised with the training split's statistics
            raise UserError(
                f"this run's model takes vectors of shape {shape}, not images; give vectors normalised as in training "
                "to run.model.encode(torch.as_tensor(x)) (run.load_data() gives the run's own, normalised)"
            )
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if tuple(array.shape) == shape or (shape[0] == 1 and tuple(array.shape) == shape[1:]):
            array = array[None]  # a single image (C x H x W, or H x W for gray); anything else is a batch
        if array.shape[0] == 0:
            return torch.zeros(0, *self.model.input_shape, device=self.device)
        tensor = checked_images(array, "images", minimum=1).to(self.device)
        if tuple(tensor.shape[1:]) != self.model.input_shape:
            raise UserError(f"images of shape {tuple(tensor.shape[1:])}; the model takes {self.model.input_shape}")
        return tensor

    def _batched(self, step: Any, x: torch.Tensor, batch_size: int, width: int) -> torch.Tensor:
        chunks = [step(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, width, device=self.device)

    @torch.inference_mode()
    def encode(self, images: Any, batch_size: int = 1024) -> torch.Tensor:
        """Codes of one image or a batch (H x W, C x H x W, N x H x W or N x C x H x W; uint8, uint16, bool or
        float in [0, 1])."""
        return self._batched(self.model.encode, self._images(images), batch_size, self.model.code_dim)

    @torch.inference_mode()
    def reconstruct(self, images: Any, batch_size: int = 1024) -> torch.Tensor:
        x = self._images(images)
        if len(x) == 0:
            return x
        return torch.cat(
            [self.model(x[start : start + batch_size]).reconstruction for start in range(0, len(x), batch_size)]
        )

    @torch.inference_mode()
    def decode(self, codes: Any) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        return self.model.decode(codes.float().to(self.device))

    def objective(self) -> Objective:
        return Objective(REGISTRY.build(self.config.loss), self.model)

    @property
    def active_threshold(self) -> float:
        """The |code| above which a unit counts as active, as the run counted it in training."""
        return active_threshold(self.config.trainer.active_threshold, self.model.code_activation)

    def noise(self) -> Noise:
        return REGISTRY.build(self.config.noise)

    def validation_noise_generator(self) -> torch.Generator:
        return validation_noise_generator(self.config.seed, self.device)

    def load_data(self, data: Optional[Any] = None) -> DataBundle:
        """The run's own data set (or ``data``, a typed data config of the same shape), on the model's device."""
        config = data if data is not None else self.config.data
        trained_normalize = getattr(self.config.data, "normalize", None)  # data=vectors: the model's input space
        if getattr(config, "normalize", trained_normalize) != trained_normalize:
            raise ConfigError(
                "data.normalize",
                config.normalize,
                f"the run trained on data.normalize={trained_normalize}; its model takes inputs normalised that way",
            )
        try:
            bundle = REGISTRY.build(config)
        except DataError as error:
            if data is not None or not hasattr(config, "path"):
                raise
            raise DataError(
                f"the run's data cannot be read: {error}; if it moved, add data={config.name} data.path=NEW_PATH "
                "to score it there"
            ) from None
        if data is None and self.data_fingerprint not in (None, data_fingerprint(bundle)):
            raise DataError(
                f"the run's data ({_data_source(config)}) changed since the run trained: other images, labels or "
                "another split; scores on it would not be the run's validation scores. Restore it, or name the data "
                "explicitly (data=... data.path=...) to score other data"
            )
        if bundle.input_shape != self.model.input_shape:
            raise UserError(
                f"data={config.name} gives images of shape {bundle.input_shape}, "
                f"but the run's model takes {self.model.input_shape}"
            )
        return bundle.to(self.device)


def _data_source(config: Any) -> str:
    for key in ("path", "root"):
        if hasattr(config, key):
            return f"data.{key}='{getattr(config, key)}'"
    return f"data={config.name}"


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu") -> TrainedRun:
    """Rebuild a trained run's model from its folder (no data needed); ``device`` as trainer.device.

    ``run`` is a run folder or a folder written by ``autoenc export`` (which holds one network: leave
    ``checkpoint`` at its default). A checkpoint written by another run than the folder's
    (``checkpoint=PATH`` from elsewhere, or a foreign file copied in) is refused, so a run's scores are
    always its own model's."""
    if is_export(Path(run)):
        return load_export(Path(run), checkpoint, device)
    path = checkpoint_path(Path(run), checkpoint)
    state = load_checkpoint(path)
    config = typed_config(state["config"])
    check_checkpoint_belongs(state, path, Path(run), config)
    model = build_model(config, tuple(state["input_shape"]))
    network, phases = _enter_phase(model, config, state["phase_index"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"the checkpoint does not fit the model built from its config ({first[:200]})") from None
    network.to(resolve_device(device)).eval().requires_grad_(False)
    fingerprint = (state.get("fingerprint") or {}).get("data")
    index = state["phase_index"]
    return TrainedRun(network, config, path, phases[index].name, int(state["epoch"]), fingerprint, index)


def _enter_phase(model: Autoencoder, config: TrainConfig, phase_index: int) -> tuple[Autoencoder, list[Any]]:
    """Replay the schedule's phase set-up up to ``phase_index`` (stage views, untying); returns the network
    that phase trained and the phases."""
    phases = REGISTRY.build(config.schedule, config.trainer, model)
    network = model
    for phase in phases[: phase_index + 1]:
        network, _ = phase.enter(model)
    return network, phases


# ``autoenc export``: a folder with these two files; nothing pickled (tensors in safetensors, the rest JSON).
EXPORT_FORMAT = "autoenc-export"
EXPORT_VERSION = 1
EXPORT_CONFIG = "config.json"
EXPORT_TENSORS = "model.safetensors"

# torch dtypes as the safetensors header names them, to refuse tensors that would be cast on loading.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is (or claims to be) an exported model rather than a run folder."""
    folder = Path(folder)
    has_export_file = (folder / EXPORT_CONFIG).is_file() or (folder / EXPORT_TENSORS).is_file()
    return folder.is_dir() and has_export_file and not (folder / "checkpoints").is_dir()


def read_export_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported model, checked: the format marker and version, and the fields needed to
    rebuild the model. Anything else (missing, not JSON, another format, a newer version) is one line."""
    folder = Path(folder)
    path, tensors = folder / EXPORT_CONFIG, folder / EXPORT_TENSORS
    if not path.is_file():
        raise UserError(f"'{folder}' holds {EXPORT_TENSORS} but no {EXPORT_CONFIG}: not a complete autoenc export")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"'{path}' is not readable JSON ({reason[:160]}): not a complete autoenc export") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"'{path}' is not the config.json of an autoenc export (its format is not {EXPORT_FORMAT})")
    version = meta.get("version")
    if version != EXPORT_VERSION:
        newer = isinstance(version, int) and version > EXPORT_VERSION
        raise UserError(
            f"'{folder}' is an autoenc export of version {version!r}; this autoenc reads version {EXPORT_VERSION}"
            + (" (upgrade autoenc to load it)" if newer else "")
        )
    if not tensors.is_file():
        raise UserError(f"'{folder}' has no {EXPORT_TENSORS}: not a complete autoenc export")
    shape, index = meta.get("input_shape"), meta.get("phase_index")
    problems = [
        "input_shape (a list of positive whole numbers)"
        if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape))
        else None,
        "config (the run's config, a mapping)" if not isinstance(meta.get("config"), dict) else None,
        "phase_index (a whole number >= 0)" if not (isinstance(index, int) and index >= 0) else None,
        "code_dim (a whole number)" if not isinstance(meta.get("code_dim"), int) else None,
    ]
    missing = [problem for problem in problems if problem is not None]
    if missing:
        raise UserError(f"'{path}' lacks a valid {', '.join(missing)}: not a complete autoenc export")
    return meta


def load_export(folder: Path, checkpoint: str = "best", device: str = "cpu") -> TrainedRun:
    """An exported model (``autoenc export``): rebuilt from config.json as a run's checkpoint is, its
    tensors loaded strictly from model.safetensors."""
    folder = Path(folder)
    if checkpoint != "best":
        raise UserError(
            f"run='{folder}' is an exported model, which holds one network; leave checkpoint= out "
            f"(checkpoint={checkpoint} names one of a run folder's checkpoints)"
        )
    meta = read_export_config(folder)
    config = typed_config(meta["config"])
    model = build_model(config, tuple(meta["input_shape"]))
    network, phases = _enter_phase(model, config, meta["phase_index"])
    index = meta["phase_index"]
    if index >= len(phases) or phases[index].name != meta.get("phase", phases[index].name):
        names = ", ".join(phase.name for phase in phases)
        raise UserError(
            f"'{folder / EXPORT_CONFIG}': phase {meta.get('phase')!r} (index {index}) is not in its config's "
            f"schedule ({names})"
        )
    path = folder / EXPORT_TENSORS
    load_tensors(network, path)
    if network.code_dim != meta["code_dim"]:
        raise UserError(
            f"'{folder / EXPORT_CONFIG}' says code_dim={meta['code_dim']}, but its config builds a network with "
            f"code size {network.code_dim}"
        )
    network.to(resolve_device(device)).eval().requires_grad_(False)
    epoch = meta.get("epoch")
    fingerprint = meta.get("data_fingerprint")
    return TrainedRun(
        network,
        config,
        path,
        phases[index].name,
        int(epoch) if isinstance(epoch, int) else 0,
        fingerprint if isinstance(fingerprint, str) else None,
        index,
    )


def load_tensors(network: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors into ``network`` strictly: every tensor present, none extra, each of the
    network's shape and dtype (never cast). Shared tensors saved once (safetensors.torch.save_model) load
    into every name that shares them."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    expected = network.state_dict()
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {key: handle.get_slice(key) for key in handle.keys()}
            described = {key: (tuple(piece.get_shape()), piece.get_dtype()) for key, piece in header.items()}
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: safetensors' own error, in one line
        raise UserError(f"'{path}' is not a readable safetensors file ({_first_line(error)})") from None
    for key in (key for key in expected if key in described):  # in the model's order: its first misfit
        (shape, dtype), tensor = described[key], expected[key]
        want_shape, want_dtype = tuple(tensor.shape), SAFETENSORS_DTYPES.get(tensor.dtype, dtype)
        if shape != want_shape or dtype != want_dtype:
            raise UserError(
                f"'{path}' does not fit the model built from its config.json: {key} is {dtype} {list(shape)}, "
                f"the model's is {want_dtype} {list(want_shape)}"
            )
    try:
        missing, unexpected = load_model(network, str(path), strict=False, device="cpu")
    except Exception as error:  # noqa: BLE001 - any failure to read or copy is "does not fit", in one line
        raise UserError(
            f"'{path}' cannot be loaded into the model built from its config.json ({_first_line(error)})"
        ) from None
    if missing or unexpected:
        parts = [
            f"{what} {', '.join(sorted(keys)[:3])}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise UserError(f"'{path}' does not fit the model built from its config.json ({'; '.join(parts)})")


def _first_line(error: Exception) -> str:
    """The first informative line of an error (torch's state-dict errors start with a header line)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    informative = [line for line in lines if not line.startswith("Error(s) in loading")]
    return ((informative or lines or [type(error).__name__])[0])[:200]
