"""Sparse-autoencoder training from a memory-mapped activation cache (``data=activations data.load=memmap``)
against a bare loop that reads the same rows from the same memory-mapped shard files.

Both train the same top-k SAE (two copies built from one config and seed) with the same objective
(reconstruction plus AuxK), Adam and the decoder's unit-norm step, on the same training rows in batches of the
same size, normalised by the same number (unit mean square). autoenc goes through its real trainer and data
path (``Trainer.train_epoch``: the seeded permutation, ``MappedRows`` over ``ShardedRows``); the bare loop is
what one writes by hand: a permutation, per shard a fancy index of the rows it holds, ``torch.from_numpy``,
float32, divide. The training split is a seeded ``data.limit`` sample of ``--steps`` batches spread over the
whole cache, so an epoch is short: the two alternate epoch by epoch for ``--rounds`` rounds (after a warm-up
round that also brings the shards into the page cache), and the ratio is the median of each round's ratio,
which other programs on the machine disturb far less than the rates themselves (also given, as medians).

A second row times the reads alone (no model) over every row of the cache: each batch's rows as normalised
float32 tensors, through autoenc's split (``MappedRows`` over ``ShardedRows``, the order the batch asked for)
against the bare reads, to show what the data path costs where the model is cheap.

    python -m benchmarks activations [--tokens 65536] [--shard-tokens 16384] [--width 256] [--latents 1024]
        [--k 32] [--batch 1024] [--steps 4] [--rounds 20] [--device cpu] [--out bench.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from autoenc_cli.build import build_parts
from autoenc_cli.compose import run_config
from autoenc_cli.data.activation_cache import write_cache
from autoenc_cli.data.tensors import MappedRows, Split, iterate_batches
from autoenc_cli.folder_layout import CacheLayout
from autoenc_cli.training.parts import RunParts
from benchmarks.core import autoenc_loop, throughput

HOOK = "model.layers.15"
VAL_FRACTION = 0.05


def synthetic_cache(folder: Path, tokens: int, width: int, shard_tokens: int) -> Path:
    """A float16 cache of ``tokens`` rows in shards of ``shard_tokens``: features with their own offsets and
    scales, and a few large ones, as a residual stream has."""
    rng = np.random.default_rng(0)
    scales = np.exp(rng.normal(0, 0.7, width)).astype(np.float32)
    offsets = rng.normal(0, 1, width).astype(np.float32)
    shards = []
    for start in range(0, tokens, shard_tokens):
        rows = min(shard_tokens, tokens - start)
        shards.append((rng.standard_normal((rows, width), dtype=np.float32) * scales + offsets).astype(np.float16))
    identity = {"model": {"source": "synthetic"}, "context_size": 129, "text": {"source": "synthetic"}, "seed": 0}
    write_cache(folder, {HOOK: shards}, identity)
    return folder


def parts_for(cache: Path, args: argparse.Namespace) -> RunParts:
    limit = math.ceil(args.steps * args.batch / (1 - VAL_FRACTION))  # about --steps training batches
    overrides = ["data=activations", f"data.path={cache}", "data.load=memmap", f"data.batch_size={args.batch}"]
    overrides += [f"data.limit={limit}", f"data.val_fraction={VAL_FRACTION}"]
    overrides += ["data.heldout_tokens=0"]  # a synthetic cache: no language model to score the SAE with
    overrides += ["model=sparse_fc", f"model.code_dim={args.latents}", "sparsity=topk", f"k={args.k}"]
    overrides += [f"trainer.device={args.device}", "trainer.figures=false", "trainer.pca_baseline=false"]
    return build_parts(run_config(overrides))


def open_shards(cache: Path, count: int) -> list[np.ndarray]:
    """The cache's shard files, memory-mapped by the bare loop itself."""
    return [np.load(CacheLayout(cache).shard(HOOK, index), mmap_mode="r") for index in range(count)]


def bare_batches(
    split: MappedRows, shards: list[np.ndarray], batch_size: int, device: torch.device
) -> Callable[[], Iterator[torch.Tensor]]:
    """One epoch of the split's rows read by hand: sorted within the batch, gathered shard by shard."""
    rows, divisor = split.index, split.divisor.to(device)
    starts = np.cumsum([0] + [len(shard) for shard in shards])
    generator = np.random.default_rng(0)

    def batches() -> Iterator[torch.Tensor]:
        order = generator.permutation(len(rows))
        for start in range(0, len(rows), batch_size):
            wanted = np.sort(rows[order[start : start + batch_size]])
            cuts = np.searchsorted(wanted, starts)
            pieces = [shard[wanted[a:b] - first] for shard, first, a, b in zip(shards, starts, cuts[:-1], cuts[1:])]
            yield torch.from_numpy(np.concatenate(pieces)).to(device).float().div_(divisor)

    return batches


def bare_loop(parts: RunParts, shards: list[np.ndarray]) -> Callable[[], int]:
    """The hand-written step on the same model and objective: forward, loss, backward, Adam, unit-norm decoder."""
    model, objective = parts.model, parts.objective
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = bare_batches(parts.data.train.images, shards, parts.config.data.batch_size, parts.device)
    model.train()

    def run() -> int:
        seen = 0
        for clean in batches():
            loss = objective(model(clean), clean).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.after_step()
            seen += clean.shape[0]
        return seen

    return run


def read_only(batches: Callable[[], Iterator[torch.Tensor]]) -> Callable[[], int]:
    return lambda: sum(batch.shape[0] for batch in batches())


def interleaved(autoenc: Callable[[], int], bare: Callable[[], int], device: torch.device, rounds: int) -> str:
    """A table row: each one's median rows per second over ``rounds`` alternated rounds (after a warm-up
    round), and the median of the rounds' ratios."""
    autoenc(), bare()
    rates = [(throughput(autoenc, device), throughput(bare, device)) for _ in range(rounds)]
    ratio = statistics.median(mine / theirs for mine, theirs in rates)
    mine, theirs = (statistics.median(column) for column in zip(*rates))
    return f"{mine:,.0f} | {theirs:,.0f} | {ratio:.3f}x"


def measure(args: argparse.Namespace, cache: Path) -> list[str]:
    autoenc_parts, bare_parts = parts_for(cache, args), parts_for(cache, args)
    split = autoenc_parts.data.train.images
    assert isinstance(split, MappedRows), "data.load=memmap gives a memory-mapped split"
    shards = open_shards(cache, len(split.array.arrays))
    device = autoenc_parts.device
    training = interleaved(autoenc_loop(autoenc_parts, epochs=1), bare_loop(bare_parts, shards), device, args.rounds)
    every_row = MappedRows(split.array, np.arange(len(split.array)), device, split.shift, split.divisor)
    generator = torch.Generator().manual_seed(0)
    reads = interleaved(
        read_only(lambda: iterate_batches(Split(every_row), args.batch, generator)),
        read_only(bare_batches(every_row, shards, args.batch, device)),
        device,
        args.rounds,
    )
    return [f"| training steps | {training} |", f"| reads only (no model) | {reads} |"]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks activations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=65536, help="rows in the cache")
    parser.add_argument("--width", type=int, default=256, help="activation width")
    parser.add_argument("--latents", type=int, default=1024, help="the SAE's code size")
    parser.add_argument("--k", type=int, default=32, help="top-k")
    parser.add_argument("--batch", type=int, default=1024, help="rows per step")
    parser.add_argument("--shard-tokens", type=int, default=16384, help="rows per shard")
    parser.add_argument("--steps", type=int, default=4, help="training batches per epoch (a seeded sample)")
    parser.add_argument("--rounds", type=int, default=20, help="alternated epochs of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="autoenc-bench-cache-") as folder:
        cache = synthetic_cache(Path(folder) / "cache", args.tokens, args.width, args.shard_tokens)
        rows = measure(args, cache)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    shards = -(-args.tokens // args.shard_tokens)
    lines = [
        f"Machine: {machine}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads. Cache: "
        f"{args.tokens:,} float16 rows of width {args.width} in {shards} memory-mapped shards; SAE "
        f"{args.width}-{args.latents} top-{args.k}, batch {args.batch}, {args.steps} steps an epoch; medians of "
        f"{args.rounds} alternated epochs.",
        "",
        "| rows per second | autoenc (data=activations, memmap) | bare loop (same shard files) | autoenc / bare |",
        "| --- | ---: | ---: | ---: |",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
