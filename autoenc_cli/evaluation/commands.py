"""``autoenc eval``, ``autoenc encode`` and ``autoenc reconstruct``: KEY=VALUE arguments composed with
the same config machinery as ``train`` (``data=...`` picks another data set of the same shape)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.folder_layout import EVAL_JSON, RunLayout
from autoenc_cli.output_paths import (
    FolderOutputs,
    check_file_out,
    check_folder_out,
    claimed_folder_out,
    never_replacing,
    out_path,
)
from autoenc_cli.schema import check_tree, choice, number
from autoenc_cli.training.records import EvalReport, as_dict, carried

HELP = {
    "eval": "autoenc eval run=RUN_DIR [split=val|test] [checkpoint=best|last|stage1|...|PATH] [data=OPTION] "
    "[probe.labels_per_class=10,100,all] [probe.model=logistic|mlp] [probe.finetune=true] [heldout_tokens=N] "
    "[out=FILE] [overwrite=true] [threads=N]",
    "encode": "autoenc encode run=RUN_DIR out=codes.npz [split=train|val|test|all] [checkpoint=...] [data=OPTION] "
    "[overwrite=true] [threads=N]",
    "reconstruct": "autoenc reconstruct run=RUN_DIR input=FILE.npz|DIR out=OUT.npz|DIR [checkpoint=...] "
    "[overwrite=true] [threads=N]",
    "harvest": "autoenc harvest [lm=smollm2|hf] [lm.name=FOLDER] ['lm.hooks=[model.layers.15]'] "
    "[text=stdlib|pydoc|FILE|DIR] [tokens=N] out=DIR [dtype=float16|float32] [heldout_tokens=N] [threads=N]",
    "export": "autoenc export run=RUN_DIR out=DIR [checkpoint=best|last|stage1|...|PATH] [overwrite=true] "
    "[format=autoenc|saelens]",
}


@dataclass
class ProbeConfig:
    # labelled training samples per class the probes learn from (all: every label)
    labels_per_class: list[str] = field(default_factory=lambda: ["10", "100", "all"])
    model: str = choice("logistic", ("logistic", "mlp"))  # the classifier trained on the codes
    finetune: bool = False  # also train the encoder with the classifier (semi-supervised fine-tuning)
    steps: int = number(100, ge=1)  # optimisation steps of the classifier (L-BFGS iterations for logistic)
    l2: float = number(1e-4, ge=0)  # L2 penalty on the classifier's weights
    seed: int = number(0, ge=0)  # which labelled samples each class contributes

    def counts(self) -> list[Optional[int]]:
        """Labels per class as numbers; None for ``all``."""
        counts: list[Optional[int]] = []
        for value in self.labels_per_class:
            if str(value) == "all":
                counts.append(None)
            elif str(value).isdigit() and int(value) > 0:
                counts.append(int(value))
            else:
                raise ConfigError("probe.labels_per_class", value, "positive whole numbers or 'all'")
        return counts


@dataclass
class UseRunConfig:
    run: str = MISSING  # the run folder (or a sweep job's, or an export folder)
    checkpoint: str = "best"  # best, last, a stage name (stage1, finetune) or a .pt path
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda or cuda:N
    batch_size: int = number(1024, ge=1)  # samples per batch
    threads: Optional[int] = number(None, ge=1)  # CPU threads for torch, as trainer.threads; null: torch's default
    data: Any = None  # data=OPTION: another data set of the same shape; null: the run's own


@dataclass
class EvalConfig(UseRunConfig):
    split: str = choice("val", ("val", "test", "train"))  # the split scored
    out: Optional[str] = None  # a file for eval.json's contents; null: RUN_DIR's own eval.json
    overwrite: bool = False  # replace an existing out file; otherwise it is refused
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # semi-supervised probes on the codes
    # a run on an activation cache (data=activations): held-out tokens the language model scores it on (loss
    # recovered, KL); null: the run's data.heldout_tokens; 0 skips the scoring
    heldout_tokens: Optional[int] = number(None, ge=0)
    # variational models (model=vae): importance samples per input behind nll (5,000 as the IWAE paper
    # reports); 0 skips the ELBO, NLL and active-unit scores
    nll_samples: int = number(5000, ge=0)


@dataclass
class EncodeConfig(UseRunConfig):
    out: str = MISSING  # the .npz the codes (and labels) are written to
    split: str = choice("val", ("train", "val", "test", "all"))  # the split encoded (all: every split)
    overwrite: bool = False  # replace an existing out file; otherwise it is refused


@dataclass
class ReconstructConfig(UseRunConfig):
    input: str = MISSING  # a .npz of images, or a folder of PNGs
    out: str = MISSING  # a .npz, or a folder for PNGs
    overwrite: bool = False  # replace an existing out file, or earlier PNGs in the out folder


def _as_list_argument(argument: str, key: str) -> str:
    """``probe.labels_per_class=10,100,all`` as typed reads as a sweep to Hydra; make it a list (one
    value too)."""
    name, _, value = argument.partition("=")
    if name == key and not value.startswith("["):
        return f"{name}=[{value}]"
    return argument


def _default_groups(options: str) -> list[tuple[str, str]]:
    """The (group, option) pairs a command's defaults list picks (``- lm: smollm2``); not ``null`` ones."""
    import yaml

    defaults = (yaml.safe_load(options) or {}).get("defaults", [])
    return [
        (group, option)
        for entry in defaults
        if isinstance(entry, dict)
        for group, option in entry.items()
        if isinstance(option, str) and "/" not in group
    ]


def compose_command(config_name: str, schema: type, argv: Sequence[str]) -> Any:
    from autoenc_cli.compose import compose
    from autoenc_cli.registry import REGISTRY
    from autoenc_cli.schema.resolve import typed

    if any(argument in ("-h", "--help") for argument in argv):
        from importlib import resources

        configs = resources.files("autoenc_cli.configs")
        options = (configs / f"{config_name}.yaml").read_text()
        print(f"usage: {HELP[config_name]}\n\nOptions (KEY=VALUE), with their defaults:\n\n{options}")
        for group, option in _default_groups(options):  # harvest's lm=smollm2: its lm.* keys too
            print(f"\n{group}={option} (configs/{group}/{option}.yaml; {group}.KEY=VALUE):\n")
            print((configs / group / f"{option}.yaml").read_text())
        raise SystemExit(0)
    overrides = [_as_list_argument(argument, "probe.labels_per_class") for argument in argv]
    cfg = compose(config_name, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    data = plain.pop("data", None)
    if data is not None:  # what a data preset sets for training's model (data=vectors: a linear output)
        plain.pop("model", None)
    config = typed(schema, plain, "")
    if data is not None:
        config.data = typed(REGISTRY.config_class("data", data.get("name")), data, "data")
    check_tree(config)
    if config.threads is not None:  # as trainer.threads: set before any torch work
        torch.set_num_threads(config.threads)
    return config


def _split(data: Any, data_name: str, name: str) -> Any:
    split = getattr(data, name)
    if split is None:
        raise UserError(f"split={name}: the data set {data_name} has no {name} split; use split=val")
    return split


@torch.inference_mode()
def encode_split(model: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [model.encode(images[start : start + batch_size]) for start in range(0, images.shape[0], batch_size)]
    )


@torch.inference_mode()
def reconstruct_images(model: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [model(images[start : start + batch_size]).reconstruction for start in range(0, images.shape[0], batch_size)]
    )


def load_for_command(config: UseRunConfig) -> Any:
    from autoenc_cli.evaluation.loading import load_run

    return load_run(Path(config.run), config.checkpoint, config.device)


def evaluate_run(config: EvalConfig) -> EvalReport:
    from autoenc_cli.baselines.pca import PCA
    from autoenc_cli.data.tensors import in_memory
    from autoenc_cli.training.metrics import corrupted_inputs, evaluate

    run = load_for_command(config)
    check_heldout_tokens(config, config.data or run.config.data)  # before the data is loaded
    data = run.load_data(config.data)
    model, train = run.model, data.train
    split = _split(data, (config.data or run.config.data).name, config.split)
    noise = run.noise()
    scores, _ = evaluate(
        model,
        run.objective(),
        split,
        config.batch_size,
        noise if noise.active else None,
        run.validation_noise_generator(),
        run.active_threshold,
    )
    # Like with like: PCA projects what the autoencoder saw (the same corruption, for a denoising run).
    inputs = None
    if noise.active:
        inputs = corrupted_inputs(split, config.batch_size, noise, run.validation_noise_generator())
    input_size = model.input_size
    report = carried(
        scores,
        EvalReport,
        run=str(Path(config.run).absolute()),
        checkpoint=config.checkpoint,
        data=(config.data or run.config.data).name,
        split=config.split,
        samples=len(split),
        inputs=f"corrupted (noise={run.config.noise.name})" if noise.active else "clean",
        code_dim=model.code_dim,
        input_size=input_size,
        compression_ratio=input_size / model.code_dim,
    )
    pca: Optional[PCA] = None
    if model.code_dim < min(input_size, len(train)) and not (in_memory(train) and in_memory(split)):
        from autoenc_cli.artifacts.console import console

        console.print("[yellow]note[/]: PCA baseline skipped: the data is read per batch from a memory map")
    elif model.code_dim < min(input_size, len(train)):
        pca = PCA(model.code_dim).fit(train.images)
        report.pca_mse = pca.reconstruction_mse(split.images if inputs is None else inputs, split.images)
        report.pca_squared_error_per_image = report.pca_mse * input_size
        report.ae_pca_mse_ratio = report.mse / report.pca_mse
    if train.labels is not None and split.labels is not None and config.probe.labels_per_class:
        report.probe = run_probes(config.probe, model, data, split, pca)  # probes see clean images
    if config.nll_samples != EvalConfig.nll_samples and not model.variational:
        raise ConfigError("nll_samples", config.nll_samples, "scores variational models only (model=vae): leave it out")
    if model.variational and config.nll_samples:
        from autoenc_cli.training.likelihood import likelihood, with_likelihood

        loss, seed = run.objective().reconstruction, run.config.seed + 3
        with_likelihood(report, likelihood(model, loss, split, config.batch_size, config.nll_samples, seed))
    return with_lm_score(report, config, run, model)


def check_heldout_tokens(config: EvalConfig, data: Any) -> None:
    """heldout_tokens= for a run on other data than an activation cache is refused, never ignored."""
    from autoenc_cli.lm.run_scoring import on_activation_cache

    if config.heldout_tokens and not on_activation_cache(data):
        raise ConfigError(
            "heldout_tokens",
            config.heldout_tokens,
            f"loss recovered scores runs on a language model's activations (data=activations), not data={data.name}",
        )


def with_lm_score(report: EvalReport, config: EvalConfig, run: Any, model: Any) -> EvalReport:
    """``report`` with, for a run on an activation cache, its loss recovered on the cache's held-out text."""
    from autoenc_cli.lm.run_scoring import LossRecovered, RunSAE, held_out, with_score

    heldout = held_out(config.data or run.config.data, run.device, config.heldout_tokens)
    if heldout is None:
        return report
    return with_score(report, LossRecovered().score(RunSAE(report.run, heldout, model, run.input_normalisation)))


def run_probes(probe: ProbeConfig, model: Any, data: Any, split: Any, pca: Any) -> dict[str, Any]:
    from autoenc_cli.evaluation.probe import finetune_encoder, labelled_subset, probe_features

    train, batch = data.train, 1024
    num_classes = data.num_classes or int(max(train.labels.max(), split.labels.max()).item()) + 1
    features = {
        "codes": (encode_split(model, train.images, batch), encode_split(model, split.images, batch)),
        "pixels": (train.images.flatten(1), split.images.flatten(1)),
    }
    if pca is not None:
        features["pca"] = (pca.encode(train.images), pca.encode(split.images))
    results: dict[str, Any] = {"classifier": probe.model}
    for count in probe.counts():
        chosen = labelled_subset(train.labels, count, probe.seed)
        labels = train.labels[chosen]
        entry = {"labelled_samples": int(chosen.numel())}
        for name, (train_features, test_features) in features.items():
            entry[name] = probe_features(
                train_features[chosen],
                labels,
                test_features,
                split.labels,
                num_classes,
                probe.model,
                probe.steps,
                probe.l2,
            )
        if probe.finetune:
            entry["finetune"] = finetune_encoder(
                model, train.images[chosen], labels, split.images, split.labels, num_classes, probe.steps
            )
        results["all" if count is None else str(count)] = entry
    return results


def eval_main(argv: Sequence[str]) -> int:
    from autoenc_cli.artifacts.console import console, metrics_table, probe_table
    from autoenc_cli.artifacts.html_report import write_html_report
    from autoenc_cli.evaluation.loading import is_export
    from autoenc_cli.io import write_json

    config = compose_command("eval", EvalConfig, argv)
    out = eval_out(config)  # before the model and the data are loaded
    report = evaluate_run(config)
    result = as_dict(report)
    replace = config.overwrite or config.out is None  # the run's own eval.json is rewritten each time
    with never_replacing(out):
        write_json(out, result, replace)
    console.print(metrics_table({k: v for k, v in result.items() if k != "probe"}, title=f"eval: {config.split} split"))
    if report.probe is not None:
        console.print(probe_table(report.probe))
    if config.out is None and not is_export(Path(config.run)):  # an exported model has no run report to update
        write_html_report(Path(config.run))
    console.print(f"wrote {out.absolute()}", soft_wrap=True)
    return 0


def eval_out(config: EvalConfig) -> Path:
    """Where eval writes: out=, checked by the shared rule, or (without out=) the run's own eval.json."""
    if config.out is None:
        return RunLayout(config.run).eval_json
    hint = f" (without out=, eval writes the run's own {EVAL_JSON})"
    return check_file_out(out_path(config.out, EVAL_JSON), config.overwrite, EVAL_JSON, hint)


def encode_main(argv: Sequence[str]) -> int:
    from autoenc_cli.artifacts.console import console

    config = compose_command("encode", EncodeConfig, argv)
    # before the model and the data are loaded
    out = check_file_out(_npz_path(out_path(config.out, "codes.npz")), config.overwrite, "codes.npz")
    run = load_for_command(config)
    data = run.load_data(config.data)
    data_name = (config.data or run.config.data).name
    names = ("train", "val", "test") if config.split == "all" else (config.split,)
    splits = [(name, _split(data, data_name, name)) for name in names if config.split != "all" or getattr(data, name)]
    codes = torch.cat([encode_split(run.model, split.images, config.batch_size) for _, split in splits])
    arrays = {
        "codes": codes.float().cpu().numpy(),
        "split": np.concatenate([np.full(len(split), name) for name, split in splits]),
    }
    if all(split.labels is not None for _, split in splits):
        arrays["labels"] = torch.cat([split.labels for _, split in splits]).cpu().numpy()
        if data.class_names is not None:  # labels are class ids; this names each (the user's own labels)
            arrays["class_names"] = np.array(data.class_names)
    written = _save_npz(out, arrays, config.overwrite)
    console.print(f"wrote {codes.shape[0]} codes of size {codes.shape[1]} to {written}", soft_wrap=True)
    return 0


def reconstruct_main(argv: Sequence[str]) -> int:
    from autoenc_cli.artifacts.console import console
    from autoenc_cli.data.files import IMAGE_SUFFIXES, read_user_images

    config = compose_command("reconstruct", ReconstructConfig, argv)
    out = out_path(config.out, RECONSTRUCTIONS.example)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(
            f"out='{out}' names one image file; reconstruct writes a .npz (out=FILE.npz) or a folder of PNGs (out=DIR)"
        )
    if out.suffix == ".npz":  # before the model and the images are loaded
        check_file_out(out, config.overwrite, "reconstructions.npz")
    else:
        check_folder_out(out, config.overwrite, RECONSTRUCTIONS)
    run = load_for_command(config)
    if len(run.model.input_shape) != 3:  # data=vectors: input= and out= are images
        raise UserError(
            f"reconstruct reads and writes images, but run='{config.run}' takes vectors of shape "
            f"{run.model.input_shape}; use autoenc encode for their codes"
        )
    images = read_user_images(Path(config.input), run.model.input_shape).to(run.device)
    outputs = reconstruct_images(run.model, images, config.batch_size).clamp(0, 1).cpu()
    if out.suffix == ".npz":
        arrays = {"inputs": images.cpu().numpy(), "reconstructions": outputs.numpy()}
        written = _save_npz(out, arrays, config.overwrite)
    else:
        written = _save_pngs(out, outputs, png_names(Path(config.input), len(outputs)), config.overwrite)
    console.print(f"wrote {outputs.shape[0]} reconstructions to {written}", soft_wrap=True)
    return 0


def _npz_path(path: Path) -> Path:
    """The file ``out=`` names: ``.npz`` is appended when missing, as numpy's savez does."""
    return path if path.suffix == ".npz" else path.with_name(f"{path.name}.npz")


# Each reconstruction PNG says in a text chunk that reconstruct wrote it: only such files are an earlier
# run's outputs, which overwrite=true may replace; the user's own images (an input folder) never are.
PNG_MARK = ("autoenc", "reconstruction")


def is_reconstruction(folder: Path, file: Path) -> bool:
    """Whether ``file`` is a PNG ``autoenc reconstruct`` wrote."""
    from PIL import Image, UnidentifiedImageError

    if file.suffix != ".png" or file.is_symlink():
        return False
    try:
        with Image.open(file) as image:
            return image.format == "PNG" and image.info.get(PNG_MARK[0]) == PNG_MARK[1]
    except (UnidentifiedImageError, OSError, ValueError):
        return False


RECONSTRUCTIONS = FolderOutputs(
    command="reconstruct",
    what="PNG reconstructions",
    earlier="{count} reconstructions",
    folder_for="for PNGs (out=DIR) or a .npz (out=FILE.npz)",
    example="reconstructions",
    is_earlier=is_reconstruction,
)


def png_names(source: Path, count: int) -> list[str]:
    """The PNG file names of ``count`` reconstructions of ``source``: a folder's images keep their names
    (and subfolders), as .png; where two would clash (a.png and a.jpg) both keep their whole name (a.png.png,
    a.jpg.png). The images of a .npz are numbered (0000.png, ...)."""
    from collections import Counter

    from autoenc_cli.data.files import image_files

    if not source.is_dir():
        width = max(4, int(math.log10(max(count, 1))) + 1)
        return [f"{index:0{width}d}.png" for index in range(count)]
    relative = [file.relative_to(source) for file in image_files(source)]  # read_user_images' order
    if len(relative) != count:
        raise UserError(f"input='{source}' changed while it was read; run the command again")
    stems = Counter(path.with_suffix(".png") for path in relative)
    return [
        (
            path.with_suffix(".png") if stems[path.with_suffix(".png")] == 1 else path.with_name(f"{path.name}.png")
        ).as_posix()
        for path in relative
    ]


def _save_npz(path: Path, arrays: dict[str, np.ndarray], overwrite: bool) -> Path:
    """Write ``arrays`` to ``path`` (``.npz`` appended when missing; an existing file replaced only with
    ``overwrite``); returns the absolute path written."""
    import io

    from autoenc_cli.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = _npz_path(path)
    with never_replacing(path):
        atomic_write_bytes(path, buffer.getvalue(), replace=overwrite)
    return path.resolve()


def _png_bytes(image: torch.Tensor) -> bytes:
    """One (C, H, W) uint8 image as PNG bytes, marked as a reconstruction."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    mark = PngInfo()
    mark.add_text(*PNG_MARK)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=mark)
    return buffer.getvalue()


def _save_pngs(folder: Path, images: torch.Tensor, names: list[str], overwrite: bool) -> Path:
    """One PNG per image, named ``names``, in ``folder`` claimed for this process. Earlier reconstructions
    there are removed first (checked again under the claim: overwrite=true), so the folder never mixes two
    runs' outputs; a failure removes what this call wrote. Returns the absolute folder."""
    from autoenc_cli.io import atomic_write_bytes

    with claimed_folder_out(folder, overwrite, RECONSTRUCTIONS, "reconstruction") as earlier:
        for file in earlier:
            file.unlink()
        written: list[Path] = []
        try:
            for name, image in zip(names, (images * 255).round().to(torch.uint8)):
                atomic_write_bytes(folder / name, _png_bytes(image))
                written.append(folder / name)
        except BaseException:
            _remove_written(folder, written)
            raise
    return folder.resolve()


def _remove_written(folder: Path, written: list[Path]) -> None:
    """Remove the files a failed call wrote, and the subfolders of ``folder`` that held only them."""
    for file in written:
        file.unlink(missing_ok=True)
    for parent in sorted({p for file in written for p in file.parents if folder in p.parents}, reverse=True):
        try:
            parent.rmdir()
        except OSError:
            pass
