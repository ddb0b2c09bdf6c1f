"""A user's own data: arrays in a .npz file, or a folder of image files."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from omegaconf import MISSING

from autoenc_cli.data.base import ImageDataConfig, make_bundle
from autoenc_cli.data.tensors import DataBundle, as_images
from autoenc_cli.errors import ConfigError, DataError
from autoenc_cli.registry import register
from autoenc_cli.schema import number

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


@dataclass
class NpzConfig(ImageDataConfig):
    name: str = "npz"
    path: str = MISSING  # a .npz with `images` (N x H x W or N x C x H x W) and optional `labels`

    def input_shape(self) -> tuple[int, ...]:
        """Read from the array's header inside the archive; the pixels are not loaded."""
        return images_header(Path(self.path), "data.path")


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


def images_header(path: Path, key: str, float_copies: int = 2) -> tuple[int, ...]:
    """One image's shape from the ``images`` header, after refusing what cannot load: an array of
    Python objects, or one too large for memory. Nothing is allocated.

    The memory a load needs at its peak: the array as stored, plus ``float_copies`` float32 copies (a
    data set: the converted images and the train/validation split made from them)."""
    shape, dtype = npz_member_header(path, "images", key)
    one = sample_shape(shape, f"'{path}'")
    _refuse_objects(dtype, path, key, "images")
    needed = dtype.itemsize + 4 * float_copies
    check_fits_in_memory(shape, needed, f"{key}='{path}': 'images' of shape {shape} ({dtype})")
    return one


def _refuse_objects(dtype: np.dtype, path: Path, key: str, member: str) -> None:
    if dtype.hasobject:
        raise DataError(
            f"{key}='{path}': '{member}' holds Python objects, which autoenc does not unpickle; save it as numbers "
            f"or strings (np.asarray(..., dtype=str) for names)"
        )


def available_memory() -> Optional[int]:
    """Bytes that can still be allocated: the kernel's MemAvailable (page cache counts as free), capped by
    a container's memory limit; None where neither is known (the check is then skipped)."""
    candidates: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            candidates.append(int(Path(limit_file).read_text().strip()))  # "max" (no limit) is not a number
        except (OSError, ValueError):
            continue
    return min(candidates) if candidates else None


def _bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError


def check_fits_in_memory(shape: tuple[int, ...], bytes_per_value: int, what: str) -> None:
    """Refuse, before anything is allocated, data whose loading needs more memory than is available."""
    needed, available = math.prod(shape) * bytes_per_value, available_memory()
    if available is not None and needed > available:
        raise DataError(
            f"{what}: loading needs about {_bytes(needed)} of memory, but {_bytes(available)} is available; "
            "use fewer or smaller images"
        )


@register(NpzConfig)
def load_npz(config: NpzConfig) -> DataBundle:
    """A user's own arrays: images as uint8 (0..255), uint16 (0..65535) or float in [0, 1]; labels of
    any kind (integers, strings, whole floats) become class ids 0..C-1."""
    images, labels = read_npz(Path(config.path), "data.path", with_labels=True)
    tensor = checked_images(images, f"'{config.path}'")
    ids, names = (None, None) if labels is None else class_ids(labels, len(tensor), f"'{config.path}'")
    bundle = make_bundle(tensor, ids, config, num_classes=len(names) if names else None)
    return replace(bundle, class_names=names)


def read_npz(path: Path, key: str, with_labels: bool, float_copies: int = 2) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``images`` (and ``labels``), with every refusal that the headers allow made before loading."""
    images_header(path, key, float_copies)  # the same one-line errors as the config check
    shape, _ = npz_member_header(path, "images", key)
    labelled = with_labels and _has_member(path, "labels", key)
    if labelled:
        label_shape, label_dtype = npz_member_header(path, "labels", key)
        _refuse_objects(label_dtype, path, key, "labels")
        if not label_shape or label_shape[0] != shape[0] or len(label_shape) > 2:
            raise DataError(
                f"{key}='{path}': labels must have shape ({shape[0]},), one class per image, or be one-hot "
                f"({shape[0]}, C); got {label_shape}"
            )
    try:
        with np.load(path) as arrays:
            return arrays["images"], arrays["labels"] if labelled else None
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise _npz_error(path, key, error) from None


def _has_member(path: Path, member: str, key: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{member}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise _npz_error(path, key, error) from None


def first_index(mask: np.ndarray) -> tuple[int, ...]:
    """The index of the first True in ``mask`` (C order), e.g. (image, channel, row, column)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def check_unit_range(values: np.ndarray, source: str, what: str = "float images") -> None:
    """Float intensities must be finite and in [0, 1]; a refusal says how many values and where."""
    finite = np.isfinite(values)
    if not finite.all():
        nans = int(np.isnan(values).sum())
        infinite = int(values.size - finite.sum()) - nans
        counts = " and ".join(f"{count:,} {name}" for count, name in ((nans, "NaN"), (infinite, "infinite")) if count)
        raise DataError(
            f"{source}: {counts} values (first at index {first_index(~finite)}); {what} must be finite and lie "
            "in [0, 1]"
        )
    outside = (values < 0) | (values > 1)
    if outside.any():
        where = first_index(outside)
        raise DataError(
            f"{source}: {int(outside.sum()):,} of {values.size:,} values lie outside [0, 1] (first at index "
            f"{where}: {values[where]:.4g}; all lie in {values.min():.4g}..{values.max():.4g}); {what} must lie "
            "in [0, 1]"
        )


def checked_images(images: np.ndarray, source: str, minimum: int = 2) -> torch.Tensor:
    """N x H x W or N x C x H x W arrays as float32 in [0, 1], scaled by their type's full range."""
    sample_shape(images.shape, source)
    if images.shape[0] < minimum:
        raise DataError(f"{source}: need at least {minimum} images; got {images.shape[0]}")
    if np.issubdtype(images.dtype, np.floating):
        check_unit_range(images, source)
    elif images.dtype not in (np.uint8, np.uint16, np.bool_):
        spread = f", values {images.min()}..{images.max()}" if np.issubdtype(images.dtype, np.number) else ""
        raise DataError(
            f"{source}: images must be uint8 (0..255), uint16 (0..65535) or float in [0, 1]; got "
            f"{images.dtype}{spread} (convert with images.astype(np.uint8), or divide to [0, 1])"
        )
    return as_images(images)


# At most this many classes, and on average two images per class: more looks like ids or targets.
MAX_CLASSES = 1000
FOLDER_CLASSES_ADVICE = "put the images in one subfolder per class, or all in the folder itself (no labels)"


def check_class_count(classes: int, count: int, source: str, advice: str) -> None:
    limit = max(2, min(MAX_CLASSES, count // 2))
    if classes > limit:
        raise DataError(
            f"{source}: labels have {classes:,} distinct values for {count:,} images; at most {limit:,} classes "
            f"are allowed (two images per class on average, {MAX_CLASSES:,} at most); {advice}"
        )


def class_ids(labels: np.ndarray, count: int, source: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """A user's labels as class ids 0..C-1 (in sorted order of the labels) and each class's name.

    Integers (negative or with gaps), strings, booleans and whole-number floats are classes; one-hot rows
    and (N, 1) columns are read as one class per image. Anything else is refused here, at load time.
    """
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2 and labels.shape[0] == count:
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
            raise DataError(
                f"{source}: labels of shape {labels.shape} are not one-hot (one 1 per row); give one class per "
                f"image, shape ({count},)"
            )
        labels = labels.argmax(axis=1)
    if labels.shape != (count,):
        raise DataError(f"{source}: labels must have shape ({count},), one class per image; got {labels.shape}")
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        if not finite.all():
            raise DataError(
                f"{source}: {int(labels.size - finite.sum()):,} labels are NaN or infinite (first at index "
                f"{first_index(~finite)}); every image needs a class"
            )
        fractional = labels != np.round(labels)
        if fractional.any():
            where = first_index(fractional)
            raise DataError(
                f"{source}: labels must be classes, but {int(fractional.sum()):,} are not whole numbers (first at "
                f"index {where}: {labels[where]:.6g}); targets for regression are not classes"
            )
    elif labels.dtype.kind not in "biuUS":
        raise DataError(f"{source}: labels of type {labels.dtype} cannot be classes; give integers or strings")
    classes, ids = np.unique(labels, return_inverse=True)
    advice = "these look like ids or targets: store class labels, or leave 'labels' out"
    check_class_count(len(classes), count, source, advice)
    return torch.as_tensor(ids.reshape(-1)).long(), tuple(_class_name(value) for value in classes.tolist())


def _class_name(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float):
        return str(int(value))
    return str(value)


@dataclass
class ImageFolderConfig(ImageDataConfig):
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


def pixels(image: PILImage, source: str) -> np.ndarray:
    """One decoded image as float32 (H, W, C) in [0, 1], C = 1 (gray) or 3 (colour), scaled by the bit
    depth of its mode: 8-bit modes by 255, 16-bit by 65535. Values that no rule places in [0, 1] are
    refused, naming the mode; nothing is clipped."""
    mode = image.mode
    if mode == "P":  # palette: the colours it points at (and the transparency it may have)
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":  # bilevel: Pillow gives booleans
        image = image.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    mode = image.mode
    if mode in ("L", "RGB"):
        values = np.asarray(image, dtype=np.float32) / 255
    elif mode in ("LA", "RGBA", "La", "RGBa"):
        # Alpha: composited on black, so a transparent pixel is 0 whatever colour it stores (the
        # premultiplied modes La and RGBa already are).
        values = np.asarray(image, dtype=np.float32) / 255
        values = values[..., :-1] if mode in ("La", "RGBa") else values[..., :-1] * values[..., -1:]
    elif mode == "I" or mode.startswith("I;"):
        # 16-bit gray (I;16, I;16B, ...) is scaled by 65535. 32-bit integer gray (mode I) does not say
        # its depth, and Pillow also uses that mode for 16-bit files: values in 0..65535 are read as
        # 16-bit; anything else (negative, or above 65535) has no known scale and is refused.
        try:
            raw = np.asarray(image).astype(np.int64)
        except (ValueError, TypeError, OSError):
            raise DataError(f"{source} has image mode {mode}, which autoenc cannot read; save it as PNG") from None
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise DataError(
                f"{source} is a 32-bit integer image (mode {mode}) with values {raw.min()}..{raw.max()}; autoenc "
                "reads integer gray images as 16-bit (0..65535). Save it as 8- or 16-bit, or as 32-bit float in "
                "[0, 1]"
            )
        values = raw.astype(np.float32) / 65535
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        check_unit_range(values, source, "32-bit float images (mode F)")
    else:
        try:
            values = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        except (ValueError, OSError):
            raise DataError(f"{source} has image mode {mode}, which autoenc cannot read; save it as PNG") from None
    return values[..., None] if values.ndim == 2 else values


def _to_channels(values: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) to (C', H, W): colour to gray by ITU-R 601-2 luma (as Pillow's L), gray to colour by copies."""
    if values.shape[-1] == 3 and channels == 1:
        values = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif values.shape[-1] == 1 and channels == 3:
        values = np.repeat(values, 3, axis=-1)
    return values.transpose(2, 0, 1)


def _resized(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32 resized per channel in 32-bit float (no 8-bit rounding on the way)."""
    from PIL import Image

    if values.shape[1:] == (height, width):
        return values
    planes = [np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BILINEAR)) for plane in values]
    # Bilinear weights are positive and sum to one: only float rounding can leave [0, 1].
    return np.clip(np.stack(planes), 0, 1)


def read_image_files(files: list[Path], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode and resize each file once: (N, C, H, W) float32 in [0, 1] (see ``pixels`` for the scaling)."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    # The decoded float32 images, and the train/validation split made from them.
    what = f"'{files[0].parent}': {len(files):,} images of {channels} x {height} x {width}" if files else "no images"
    check_fits_in_memory((len(files), channels, height, width), 2 * 4, what)
    images = np.empty((len(files), channels, height, width), dtype=np.float32)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                images[index] = _resized(_to_channels(pixels(image, f"'{file}'"), channels), height, width)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise DataError(f"'{file}' is not a readable image ({error})") from None
    return images


def read_user_images(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """Images for a trained model: a .npz with ``images`` of exactly ``shape``, or a folder resized to it."""
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"input='{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return as_images(read_image_files(files, shape[0], (shape[1], shape[2])))
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(f"input='{path}' is neither a .npz file nor a folder of images")
    one = images_header(path, "input", float_copies=1)  # no split: the images and their float32 copy
    if one != tuple(shape):
        raise DataError(f"input='{path}' holds images of shape {one}; the model takes {tuple(shape)}")
    images, _ = read_npz(path, "input", with_labels=False, float_copies=1)
    return checked_images(images, f"input='{path}'", minimum=1)


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
    labels, names = None, None
    if all(file.parent != root for file in files):
        folders = [file.relative_to(root).parts[0] for file in files]
        check_class_count(len(set(folders)), len(files), f"data.path='{config.path}'", FOLDER_CLASSES_ADVICE)
        labels, names = class_ids(np.array(folders), len(files), f"data.path='{config.path}'")
    images = read_image_files(files, config.channels, tuple(config.image_size))
    bundle = make_bundle(as_images(images), labels, config, num_classes=len(names) if names else None)
    return replace(bundle, class_names=names)
