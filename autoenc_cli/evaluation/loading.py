"""Load a trained run from its folder, without its data: the model rebuilt from the saved config and
the input shape stored in the checkpoint (as nanoGPT's sample.py rebuilds a GPT from model_args).

    from autoenc_cli import load_run
    run = load_run("outputs/runs/<run>")          # or checkpoint="last" | "stage1" | a .pt path
    codes, images = run.encode(x), run.reconstruct(x)
"""

from __future__ import annotations

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

    A checkpoint written by another run than the folder's (``checkpoint=PATH`` from elsewhere, or a
    foreign file copied in) is refused, so a run's scores are always its own model's."""
    path = checkpoint_path(Path(run), checkpoint)
    state = load_checkpoint(path)
    config = typed_config(state["config"])
    check_checkpoint_belongs(state, path, Path(run), config)
    model = build_model(config, tuple(state["input_shape"]))
    phases = REGISTRY.build(config.schedule, config.trainer, model)
    network = model
    for phase in phases[: state["phase_index"] + 1]:  # replay the phases' set-up: stage views, untying
        network, _ = phase.enter(model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"the checkpoint does not fit the model built from its config ({first[:200]})") from None
    network.to(resolve_device(device)).eval().requires_grad_(False)
    fingerprint = (state.get("fingerprint") or {}).get("data")
    return TrainedRun(network, config, path, phases[state["phase_index"]].name, int(state["epoch"]), fingerprint)
