"""Data sets held as tensors on the training device, batched by index slicing."""

from autoenc_cli.data.tensors import DataBundle, Split, iterate_batches

__all__ = ["DataBundle", "Split", "iterate_batches"]
