"""Load a trained run from its folder, without its data: the model rebuilt from the saved config and
the input shape stored in the checkpoint (as nanoGPT's sample.py rebuilds a GPT from model_args).

    from autoenc_cli import load_run
    run = load_run("outputs/runs/<run>")          # or checkpoint="last" | "stage1" | a .pt path
    codes, images = run.encode(x), run.reconstruct(x)

``load_run`` also takes a folder written by ``autoenc export`` (model.safetensors + config.json): the
same model, rebuilt from config.json, with its tensors read by safetensors (nothing pickled). An export is
someone else's file, so it is checked as untrusted input before anything is built: config.json is plain
JSON whose strings are never resolved (``${oc.env:...}`` stays text), its run config passes the whole-config
check training runs (``check_config``, with the export's input shape), every tensor's name, dtype and shape
in model.safetensors's header must be what that config builds (compared with the model built on the "meta"
device, which allocates nothing), and the weights loaded must be finite.

A ``data=vectors`` run trained on normalised vectors (``data.normalize``): ``encode`` and ``reconstruct``
take raw vectors, as in the run's file, and apply the run's normalisation; ``reconstruct`` and ``decode``
give raw vectors back (the normalisation inverted). ``run.model`` works in the normalised space. A run
folder derives the statistics from its data when first needed; an export holds them in config.json
(``normalization``: ``autoenc_cli.data.vectors.Normalisation``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from autoenc_cli.build import build_model, resolve_device
from autoenc_cli.data.files import checked_images
from autoenc_cli.data.tensors import DataBundle
from autoenc_cli.data.vectors import Normalisation, load_vectors, run_normalisation
from autoenc_cli.errors import ConfigError, DataError, UserError
from autoenc_cli.folder_layout import (
    CHECKPOINT_SUFFIX,
    CHECKPOINTS,
    EXPORT_CONFIG,
    EXPORT_TENSORS,
    MULTIRUN_YAML,
    SAELENS_CONFIG,
    STUDY_DB,
    RunLayout,
    StudyLayout,
    checkpoint_file,
)
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema import TrainConfig
from autoenc_cli.schema.check import check_config, check_shorthands
from autoenc_cli.schema.resolve import typed_config
from autoenc_cli.schema.root import SHORTHANDS
from autoenc_cli.training.checkpoint import check_checkpoint_belongs, data_fingerprint, load_checkpoint
from autoenc_cli.training.metrics import active_threshold
from autoenc_cli.training.parts import validation_noise_generator


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """A checkpoint's name in the run's checkpoints/ (best, last, stage1, finetune, ...) or a .pt path."""
    if not run_dir.is_dir():
        raise UserError(f"run='{run_dir}' is not a run folder")
    named = RunLayout(run_dir).checkpoint(checkpoint)
    path = named if "/" not in checkpoint and not checkpoint.endswith(CHECKPOINT_SUFFIX) else Path(checkpoint)
    study = StudyLayout(run_dir)  # a sweep folder's layout too
    if not path.is_file() and (study.study_db.is_file() or study.multirun_yaml.is_file()):
        # A tune study or a grid sweep holds runs, one per trial or job (0/, 1/, ...): name one of them.
        from autoenc_cli.io import read_json

        jobs = sorted((p.name for p in run_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
        if study.study_db.is_file():
            best = (read_json(study.best_json) or {}).get("best") or [{}]
            example = best[0].get("run") or (jobs[0] if jobs else "<trial>")
            what, which = f"a tune study folder ({STUDY_DB})", f"one of its trials, e.g. run={run_dir / example}"
        else:
            what, which = (
                f"a sweep folder ({MULTIRUN_YAML})",
                f"one of its jobs, e.g. run={run_dir / (jobs or ['<job>'])[0]}",
            )
        raise UserError(f"'{run_dir}' is {what}, not a run; give {which}")
    if not path.is_file() and (run_dir / SAELENS_CONFIG).is_file():
        raise UserError(
            f"'{run_dir}' holds a SAELens export ({SAELENS_CONFIG}, format=saelens), which SAELens loads; autoenc "
            "reads run folders and its own exports (format=autoenc)"
        )
    if not path.is_file():
        raise UserError(
            f"no checkpoint at '{path}'; the run folder needs {CHECKPOINTS}/{checkpoint_file(checkpoint)} "
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
    step_in_epoch: int = 0  # steps into an unfinished epoch when the checkpoint was taken (0: at an epoch's end)
    # data=vectors with data.normalize: the run's statistics (an export's; a run folder's derived when needed)
    normalisation: Optional[Normalisation] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def takes_vectors(self) -> bool:
        return len(self.model.input_shape) == 1

    def _inputs(self, values: Any) -> torch.Tensor:
        """What the model takes: images checked as the command line checks them, or raw vectors normalised."""
        return self._vectors(values) if self.takes_vectors else self._images(values)

    def _images(self, images: Any) -> torch.Tensor:
        """Images checked as the command line checks them (type, range, NaN), one image or a batch."""
        shape = self.model.input_shape
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if tuple(array.shape) == shape or (shape[0] == 1 and tuple(array.shape) == shape[1:]):
            array = array[None]  # a single image (C x H x W, or H x W for gray); anything else is a batch
        if array.shape[0] == 0:
            return torch.zeros(0, *self.model.input_shape, device=self.device)
        tensor = checked_images(array, "images", minimum=1).to(self.device)
        if tuple(tensor.shape[1:]) != self.model.input_shape:
            raise UserError(f"images of shape {tuple(tensor.shape[1:])}; the model takes {self.model.input_shape}")
        return tensor

    def _vectors(self, vectors: Any) -> torch.Tensor:
        """Raw vectors (N x D, or one of D values; any real dtype, read as float32 as training reads the
        file), checked finite, normalised as the run normalised its data."""
        (width,) = self.model.input_shape
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy() if vectors.dtype != torch.bfloat16 else vectors.float().numpy()
        array = np.asarray(vectors)
        if array.dtype.kind not in "fiu":
            raise UserError(f"vectors of dtype {array.dtype}; the model takes real numbers (floats)")
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != width:
            raise UserError(f"vectors of shape {array.shape}; the model takes N x {width} (or one vector of {width})")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        finite = torch.isfinite(tensor).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[:, 0]
            raise UserError(
                f"NaN or infinite values in {len(bad):,} of {len(tensor):,} vectors (first: row {int(bad[0])}); "
                "vectors must be finite"
            )
        normalisation = self.input_normalisation()
        tensor = tensor.to(self.device)
        return normalisation.apply(tensor) if normalisation is not None else tensor

    def _outputs(self, values: torch.Tensor) -> torch.Tensor:
        """The model's outputs in the space its inputs were given in (raw vectors: normalisation inverted)."""
        normalisation = self.input_normalisation() if self.takes_vectors else None
        return normalisation.invert(values) if normalisation is not None else values

    def input_normalisation(self) -> Optional[Normalisation]:
        """The run's data.normalize statistics (None: images, or vectors taken as they are). A run folder
        derives them from its data, which must be the data it trained on (checked by its fingerprint)."""
        if getattr(self.config.data, "normalize", "none") == "none":
            return None
        if self.normalisation is None:
            self.normalisation = self._derive_normalisation()
        return self.normalisation

    def _derive_normalisation(self) -> Normalisation:
        config = self.config.data
        try:
            normalisation, fingerprint = run_normalisation(config)
        except DataError as error:
            raise DataError(
                f"the run's data.normalize={config.normalize} statistics come from its data, which cannot be read "
                f"({error}); restore it: the model takes vectors normalised with them (an export made while the "
                "data can be read keeps them)"
            ) from None
        if self.data_fingerprint not in (None, fingerprint):
            raise _changed_data(config)
        assert normalisation is not None
        return normalisation

    def _batched(self, step: Any, x: torch.Tensor, batch_size: int, width: int) -> torch.Tensor:
        chunks = [step(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, width, device=self.device)

    @torch.inference_mode()
    def encode(self, images: Any, batch_size: int = 1024) -> torch.Tensor:
        """Codes of one image or a batch (H x W, C x H x W, N x H x W or N x C x H x W; uint8, uint16, bool or
        float in [0, 1]), or of raw vectors (N x D or D) for a data=vectors run."""
        return self._batched(self.model.encode, self._inputs(images), batch_size, self.model.code_dim)

    @torch.inference_mode()
    def reconstruct(self, images: Any, batch_size: int = 1024) -> torch.Tensor:
        x = self._inputs(images)
        if len(x) == 0:
            return x
        return self._outputs(
            torch.cat(
                [self.model(x[start : start + batch_size]).reconstruction for start in range(0, len(x), batch_size)]
            )
        )

    @torch.inference_mode()
    def decode(self, codes: Any) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        return self._outputs(self.model.decode(codes.float().to(self.device)))

    @torch.inference_mode()
    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` inputs a variational model generates (the decoder's mean for codes drawn from its prior,
        seeded by ``seed``), in the shape and units of its inputs."""
        if not self.model.variational:
            raise UserError(
                f"sample() draws from a variational model's prior; this run's model is model={self.config.model.name} "
                "(train one with model=vae)"
            )
        if not isinstance(count, int) or count < 0:
            raise UserError(f"sample(count={count!r}): give a whole number >= 0")
        return self._outputs(self.model.sample(count, torch.Generator(device=self.device).manual_seed(seed)))

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
            bundle = self._build_data(config, data is not None)
        except DataError as error:
            if data is not None or not hasattr(config, "path"):
                raise
            raise DataError(
                f"the run's data cannot be read: {error}; if it moved, add data={config.name} data.path=NEW_PATH "
                "to score it there"
            ) from None
        if data is None and self.data_fingerprint not in (None, data_fingerprint(bundle)):
            raise _changed_data(config)
        if bundle.input_shape != self.model.input_shape:
            raise UserError(
                f"data={config.name} gives images of shape {bundle.input_shape}, "
                f"but the run's model takes {self.model.input_shape}"
            )
        return bundle.to(self.device)

    def _build_data(self, config: Any, other: bool) -> DataBundle:
        """The data set; vectors for a normalised run are normalised with the run's statistics (the model
        takes them so), which other vectors than the run's own need, and which an export already has."""
        if getattr(config, "normalize", "none") == "none" or not (other or self.normalisation is not None):
            return REGISTRY.build(config)
        try:
            normalisation = self.input_normalisation()
        except DataError:
            bundle = REGISTRY.build(config)  # with its own statistics: the run's, if it is the run's data moved
            if self.data_fingerprint is not None and data_fingerprint(bundle) == self.data_fingerprint:
                return bundle
            raise
        return load_vectors(config, normalisation)


def _changed_data(config: Any) -> DataError:
    return DataError(
        f"the run's data ({_data_source(config)}) changed since the run trained: other images, labels or "
        "another split; scores on it would not be the run's validation scores. Restore it, or name the data "
        "explicitly (data=... data.path=...) to score other data"
    )


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
    config = typed_config(state["config"], saved=True)
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
    step = int(state.get("step_in_epoch", 0))
    return TrainedRun(network, config, path, phases[index].name, int(state["epoch"]), fingerprint, index, step)


def _enter_phase(model: Autoencoder, config: TrainConfig, phase_index: int) -> tuple[Autoencoder, list[Any]]:
    """Replay the schedule's phase set-up up to ``phase_index`` (stage views, untying); returns the network
    that phase trained and the phases."""
    phases = REGISTRY.build(config.schedule, config.trainer, model)
    network = model
    for phase in phases[: phase_index + 1]:
        network, _ = phase.enter(model)
    return network, phases


# ``autoenc export``: a folder with two files (ExportLayout); nothing pickled (tensors in safetensors, the rest JSON).
EXPORT_FORMAT = "autoenc-export"
EXPORT_VERSION = 1
# config.json is a run config and, for a normalised vectors run, two numbers per feature: larger is not an
# export. A run config is about a kilobyte; typing one of many more (thousands of layer specs) takes minutes.
MAX_CONFIG_BYTES = 256 * 2**20
MAX_RUN_CONFIG_BYTES = 64 * 2**10
# Building a network costs time per layer, before its shapes can be compared with the file's: a config may
# describe at most as many layers as model.safetensors holds tensors (each layer has at least a bias), or
# this many (a greedy stage's export holds the first layers only).
MAX_LAYERS_WITHOUT_TENSORS = 1000

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
    return folder.is_dir() and has_export_file and not RunLayout(folder).checkpoints.is_dir()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_export_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported model, checked: the format marker and version, and the fields needed to
    rebuild the model. Anything else (missing, not JSON, another format, a newer version) is one line."""
    folder = Path(folder)
    path, tensors = folder / EXPORT_CONFIG, folder / EXPORT_TENSORS
    if not path.is_file():
        raise UserError(f"'{folder}' holds {EXPORT_TENSORS} but no {EXPORT_CONFIG}: not a complete autoenc export")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(
            f"'{path}' is {path.stat().st_size:,} bytes; an autoenc export's {EXPORT_CONFIG} is at most "
            f"{MAX_CONFIG_BYTES:,}: not an autoenc export"
        )
    try:
        meta = json.loads(path.read_text(), parse_constant=_refuse_constant)  # plain JSON: NaN is not a number
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"'{path}' is not readable JSON ({reason[:160]}): not a complete autoenc export") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"'{path}' is not the {EXPORT_CONFIG} of an autoenc export (its format is not {EXPORT_FORMAT})")
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
        if not (isinstance(shape, list) and shape and all(_whole(n) and n > 0 for n in shape))
        else None,
        "config (the run's config, a mapping)" if not isinstance(meta.get("config"), dict) else None,
        "phase_index (a whole number >= 0)" if not (_whole(index) and index >= 0) else None,
        "code_dim (a whole number)" if not _whole(meta.get("code_dim")) else None,
        "source (a mapping)" if not isinstance(meta.get("source", {}), dict) else None,
    ]
    missing = [problem for problem in problems if problem is not None]
    if missing:
        raise UserError(f"'{path}' lacks a valid {', '.join(missing)}: not a complete autoenc export")
    size = len(json.dumps(meta["config"]))
    if size > MAX_RUN_CONFIG_BYTES:
        raise UserError(
            f"'{path}': its run config takes {size:,} bytes of JSON; a run's config takes at most "
            f"{MAX_RUN_CONFIG_BYTES:,}: not an autoenc export"
        )
    return meta


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_export(folder: Path, checkpoint: str = "best", device: str = "cpu") -> TrainedRun:
    """An exported model (``autoenc export``), someone else's file: its config checked as training checks
    one, model.safetensors's header compared with the network that config describes before anything is
    allocated, then the network built and its tensors loaded strictly, and checked finite."""
    folder = Path(folder)
    if checkpoint != "best":
        raise UserError(
            f"run='{folder}' is an exported model, which holds one network; leave checkpoint= out "
            f"(checkpoint={checkpoint} names one of a run folder's checkpoints)"
        )
    meta = read_export_config(folder)
    where, path = folder / EXPORT_CONFIG, folder / EXPORT_TENSORS
    input_shape, index = tuple(meta["input_shape"]), meta["phase_index"]
    header = read_tensor_header(path)
    config = checked_export_config(meta["config"], input_shape, where, len(header))
    with torch.device("meta"):  # the network config.json describes: every shape, no memory
        described, phases = _enter_phase(build_model(config, input_shape), config, index)
    _check_phase(meta, phases, where)
    check_header_fits(described, header, path)
    if described.code_dim != meta["code_dim"]:
        raise UserError(
            f"'{where}' says code_dim={meta['code_dim']}, but its config builds a network with "
            f"code size {described.code_dim}"
        )
    network, _ = _enter_phase(build_model(config, input_shape), config, index)  # no larger than the file's tensors
    load_tensors(network, path)
    refuse_non_finite(network, path)
    normalisation = _export_normalisation(meta, config, input_shape, where)
    network.to(resolve_device(device)).eval().requires_grad_(False)
    epoch, fingerprint = meta.get("epoch"), meta.get("data_fingerprint")
    step = meta.get("source", {}).get("step_in_epoch")
    return TrainedRun(
        network,
        config,
        path,
        phases[index].name,
        epoch if _whole(epoch) else 0,
        fingerprint if isinstance(fingerprint, str) else None,
        index,
        step if _whole(step) else 0,
        normalisation,
    )


def checked_export_config(
    plain: dict[str, Any], input_shape: tuple[int, ...], where: Path, tensors: int
) -> TrainConfig:
    """The run config in an export, typed without resolving anything in it and put through every rule
    training applies (with the export's input shape: the run's data need not be here). Loggers are left
    out of the check: a tracker is training's, and need not be installed to use the model. ``tensors``:
    how many model.safetensors holds, which bounds the layers the config may describe."""
    try:
        check_shorthands(_shorthand_settings(plain))  # k=4 beside sparsity.topk.k=64: never silently one of them
        config = typed_config(plain, literal=True, saved=True)
        layers = _layer_count(config.model)
        if layers > max(tensors, MAX_LAYERS_WITHOUT_TENSORS):
            raise UserError(
                f"model describes {layers:,} layers, but {EXPORT_TENSORS} holds {tensors:,} tensors (a layer has "
                "at least one)"
            )
        check_config(dataclasses.replace(config, logger={}), input_shape)
    except UserError as error:
        raise UserError(f"'{where}': {error} (in the run config it holds)") from None
    return config


def _shorthand_settings(plain: dict[str, Any]) -> list[str]:
    """A plain run config's shorthands (``k``) and the member keys they set (``sparsity.topk.k``), written
    as the overrides ``check_shorthands`` compares."""
    settings = [f"{key}={plain[key]}" for key in SHORTHANDS if plain.get(key) is not None]
    for key, group in SHORTHANDS.items():
        members = plain.get(group)
        for name, member in members.items() if isinstance(members, dict) else ():
            if isinstance(member, dict) and member.get(key) is not None:
                settings.append(f"{group}.{name}.{key}={member[key]}")
    return settings


def _layer_count(node: Any) -> int:
    """The layers a model config describes (the num_layers of its layer specs), without expanding them."""
    if isinstance(node, list):
        return sum(_layer_count(item) for item in node)
    if not dataclasses.is_dataclass(node):
        return 0
    own = node.num_layers if _whole(getattr(node, "num_layers", None)) else 0
    return own + sum(_layer_count(getattr(node, field.name)) for field in dataclasses.fields(node))


def _check_phase(meta: dict[str, Any], phases: list[Any], where: Path) -> None:
    index = meta["phase_index"]
    if index >= len(phases) or phases[index].name != meta.get("phase", phases[index].name):
        names = ", ".join(phase.name for phase in phases)
        raise UserError(
            f"'{where}': phase {meta.get('phase')!r} (index {index}) is not in its config's schedule ({names})"
        )


def _export_normalisation(
    meta: dict[str, Any], config: TrainConfig, input_shape: tuple[int, ...], where: Path
) -> Optional[Normalisation]:
    """The run's data.normalize statistics from config.json; none for an export written before they were
    kept (a run folder's way then: derived from the run's data when needed)."""
    method, value = getattr(config.data, "normalize", "none"), meta.get("normalization")
    if method == "none":
        if value is not None:
            raise UserError(f"'{where}': normalization is given, but the run config's data has no data.normalize")
        return None
    if value is None:
        return None
    return Normalisation.from_json(value, method, input_shape[0], f"'{where}': normalization")


def read_tensor_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype from model.safetensors's header (safetensors checks the header's
    length, its JSON and that the tensors exactly cover the file); no tensor data is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return {key: (tuple(piece.get_shape()), piece.get_dtype()) for key, piece in slices.items()}
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: safetensors' own error, in one line
        raise UserError(f"'{path}' is not a readable safetensors file ({_first_line(error)})") from None


def check_header_fits(network: torch.nn.Module, header: dict[str, tuple[tuple[int, ...], str]], path: Path) -> None:
    """Every tensor of ``network`` (built on the meta device: shapes only) in the header with its shape and
    dtype (never cast), none missing, none extra. A tensor shared under several names is stored once."""
    state = network.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_of.setdefault(id(tensor), []).append(name)
    for name in (name for name in state if name in header):  # in the model's order: its first misfit
        (shape, dtype), tensor = header[name], state[name]
        want_shape, want_dtype = tuple(tensor.shape), SAFETENSORS_DTYPES.get(tensor.dtype, "?")
        if shape != want_shape or dtype != want_dtype:
            raise UserError(
                f"'{path}' does not fit the model built from its {EXPORT_CONFIG}: {name} is {dtype} {list(shape)}, "
                f"the model's is {want_dtype} {list(want_shape)}"
            )
    missing = [names[0] for names in names_of.values() if not any(name in header for name in names)]
    unexpected = [name for name in header if name not in state]
    if missing or unexpected:
        parts = [
            f"{what} {', '.join(sorted(names)[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            for what, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise UserError(f"'{path}' does not fit the model built from its {EXPORT_CONFIG} ({'; '.join(parts)})")


def load_tensors(network: torch.nn.Module, path: Path) -> None:
    """Copy model.safetensors's tensors into ``network``, whose names, shapes and dtypes ``check_header_fits``
    checked. Shared tensors saved once (safetensors.torch.save_model) load into every name that shares them."""
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(network, str(path), strict=False, device="cpu")
    except Exception as error:  # noqa: BLE001 - any failure to read or copy is "does not fit", in one line
        raise UserError(
            f"'{path}' cannot be loaded into the model built from its {EXPORT_CONFIG} ({_first_line(error)})"
        ) from None
    if missing or unexpected:  # the header said otherwise: the file changed while it was read
        raise UserError(f"'{path}' changed while it was loaded; load it again")


def refuse_non_finite(network: torch.nn.Module, where: Path) -> None:
    """NaN or infinity in a weight makes every output NaN: refused, naming the first such tensor."""
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise UserError(
                f"'{where}' holds NaN or infinite weights: {name} has {count:,} of {tensor.numel():,} values "
                "not finite; a model's weights must be finite"
            )


def _first_line(error: Exception) -> str:
    """The first informative line of an error (torch's state-dict errors start with a header line)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    informative = [line for line in lines if not line.startswith("Error(s) in loading")]
    return ((informative or lines or [type(error).__name__])[0])[:200]
