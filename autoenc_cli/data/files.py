"""A user's own data: arrays in a .npz file, or a folder of image files."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING

from autoenc_cli.data.base import DataConfig, make_bundle
from autoenc_cli.data.tensors import DataBundle, as_images
from autoenc_cli.errors import ConfigError, DataError
from autoenc_cli.registry import register
from autoenc_cli.schema import number


@dataclass
class NpzConfig(DataConfig):
    name: str = "npz"
    path: str = MISSING  # a .npz with `images` (N x H x W or N x C x H x W) and optional `labels`

    def input_shape(self) -> tuple[int, ...]:
        """Read from the array's header inside the archive; the pixels are not loaded."""
        shape, _ = npz_member_header(Path(self.path), "images", "data.path")
        return sample_shape(shape, f"'{self.path}'")


def _npz_error(path: Path, key: str, error: Exception) -> DataError:
    return DataError(f"{key}='{path}' is not a readable .npz file ({str(error).splitlines()[0]})")


def npz_member_header(path: Path, member: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in a .npz, from its .npy header alone."""
    if not path.is_file():
        raise DataError(f"{key}='{path}' is not a file; give a .npz with an '{member}' array")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.removesuffix(".npy") for name in archive.namelist()]
            if member not in names:
                raise DataError(f"{key}='{path}' has no '{member}' array (it has: {', '.join(names) or 'nothing'})")
            with archive.open(f"{member}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version, lambda handle: np.lib.format._read_array_header(handle, version))
                shape, _, dtype = read_header(handle)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise _npz_error(path, key, error) from None
    return tuple(shape), dtype


def sample_shape(array_shape: tuple[int, ...], source: str) -> tuple[int, ...]:
    """One image's C x H x W from an array of N x H x W or N x C x H x W images."""
    if len(array_shape) not in (3, 4):
        raise DataError(f"{source}: images must be N x H x W or N x C x H x W; got shape {tuple(array_shape)}")
    if len(array_shape) == 4 and array_shape[1] > 4 and array_shape[-1] <= 4:
        raise DataError(
            f"{source}: images of shape {tuple(array_shape)} look channels-last; store them as N x C x H x W"
        )
    return (1, *array_shape[1:]) if len(array_shape) == 3 else tuple(array_shape[1:])


@register(NpzConfig)
def load_npz(config: NpzConfig) -> DataBundle:
    """A user's own arrays: uint8 images in 0..255 or float images in [0, 1]."""
    path = Path(config.path)
    npz_member_header(path, "images", "data.path")  # the same one-line errors as the config check
    try:
        with np.load(path) as arrays:
            images, labels = arrays["images"], arrays["labels"] if "labels" in arrays else None
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise _npz_error(path, "data.path", error) from None
    return make_bundle(*_checked_arrays(images, labels, config.path), config, num_classes=None)


def _checked_arrays(
    images: np.ndarray, labels: Optional[np.ndarray], source: str, minimum: int = 2
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    sample_shape(images.shape, f"'{source}'")
    if images.shape[0] < minimum:
        raise DataError(f"'{source}': need at least {minimum} images; got {images.shape[0]}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise DataError(f"'{source}': images must be uint8 or float; got {images.dtype}")
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"'{source}': float images must lie in [0, 1]; got {images.min():.3g}..{images.max():.3g}")
    if labels is not None and labels.shape != (images.shape[0],):
        raise DataError(f"'{source}': labels must have shape ({images.shape[0]},); got {labels.shape}")
    return as_images(images), torch.as_tensor(labels).long() if labels is not None else None


@dataclass
class ImageFolderConfig(DataConfig):
    name: str = "image_folder"
    path: str = MISSING  # a folder of image files; one level of subfolders are taken as classes
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # height, width after resizing
    channels: int = number(3, ge=1, le=3)  # 1 (grayscale) or 3 (RGB)

    def check(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError("image_size", self.image_size, "two positive numbers: [height, width]")
        if self.channels == 2:
            raise ConfigError("channels", 2, "1 (grayscale) or 3 (RGB)")

    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.image_size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def read_image_files(files: list[Path], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode and resize each file once: (N, C, H, W) uint8."""
    from PIL import Image, UnidentifiedImageError

    mode, (height, width) = ("L" if channels == 1 else "RGB"), size
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert(mode).resize((width, height), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"'{file}' is not a readable image ({error})") from None
    images = np.stack(arrays)
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def read_user_images(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """Images for a trained model: a .npz with ``images`` of exactly ``shape``, or a folder resized to it."""
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"input='{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return as_images(read_image_files(files, shape[0], (shape[1], shape[2])))
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(f"input='{path}' is neither a .npz file nor a folder of images")
    try:
        with np.load(path) as arrays:
            if "images" not in arrays:
                raise DataError(f"input='{path}' has no 'images' array")
            images, _ = _checked_arrays(arrays["images"], None, str(path), minimum=1)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataError(f"input='{path}' is not a readable .npz file ({str(error).splitlines()[0]})") from None
    if tuple(images.shape[1:]) != tuple(shape):
        raise DataError(
            f"input='{path}' holds images of shape {tuple(images.shape[1:])}; the model takes {tuple(shape)}"
        )
    return images


@register(ImageFolderConfig)
def load_image_folder(config: ImageFolderConfig) -> DataBundle:
    """Every image under ``path``, resized to ``image_size``; subfolder names become labels.

    Decoding is per file, once, at load time; training then runs from the tensors.
    """

    root = Path(config.path)
    if not root.is_dir():
        raise DataError(f"data.path='{config.path}' is not a folder of images")
    files = image_files(root)
    if len(files) < 2:
        raise DataError(
            f"data.path='{config.path}' holds {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}); need at least 2"
        )
    images = read_image_files(files, config.channels, tuple(config.image_size))
    classes = sorted({file.parent.relative_to(root).parts[0] for file in files if file.parent != root})
    labels = None
    if classes and all(file.parent != root for file in files):
        index = {name: position for position, name in enumerate(classes)}
        labels = torch.tensor([index[file.relative_to(root).parts[0]] for file in files])
    return make_bundle(as_images(images), labels, config, num_classes=len(classes) or None)
