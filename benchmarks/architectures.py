"""The SAE architectures' training steps against top-k's, on a language model's shapes (576 -> 4,096 latents,
batches of 1,024 rows): what JumpReLU, BatchTopK and Matryoshka cost per step, and Matryoshka's nested
reconstructions through an affine decoder (one decoder pass's arithmetic) against decoding each prefix's
masked code (one pass per prefix), interleaved, median of repeats.

    python -m benchmarks architectures [--repeats 5] [--steps 5] [--width 576] [--latents 4096] [--batch 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Sequence
from unittest import mock

import torch

from autoenc_cli.losses import MSEConfig, Objective
from autoenc_cli.models.fc import FCAutoencoder, SparseFCModelConfig
from autoenc_cli.registry import REGISTRY
from autoenc_cli.sparsity.base import SparsityStack
from autoenc_cli.sparsity.hard import BatchTopKConfig, TopKConfig
from autoenc_cli.sparsity.jumprelu import JumpReLUConfig
from autoenc_cli.sparsity.matryoshka import MatryoshkaConfig

BASELINE, MASKED = "topk k=32 (baseline)", "matryoshka, each prefix decoded"


def options(name: str, latents: int) -> list:
    prefixes = MatryoshkaConfig(prefixes=[latents // 32, latents // 8, latents // 2])
    return {
        BASELINE: [TopKConfig(k=32)],
        "batch_topk k=32": [BatchTopKConfig(k=32)],
        "jumprelu target l0 32": [JumpReLUConfig(target_l0=32)],
        "matryoshka batch_topk k=32, 3 prefixes": [BatchTopKConfig(k=32), prefixes],
        MASKED: [BatchTopKConfig(k=32), prefixes],
    }[name]


CASES = (BASELINE, "batch_topk k=32", "jumprelu target l0 32", "matryoshka batch_topk k=32, 3 prefixes", MASKED)


def training_step(name: str, width: int, latents: int, batch: int) -> Callable[[], None]:
    """One Adam step of the case's SAE (lm_sae's model: ReLU code, unit-norm decoder, linear output)."""
    torch.manual_seed(0)
    sparsity = SparsityStack({config.name: REGISTRY.build(config, latents) for config in options(name, latents)})
    model_config = SparseFCModelConfig(code_dim=latents, output_activation="linear", unit_norm_decoder=True)
    model = FCAutoencoder(model_config, (width,), code_transform=sparsity).train()
    objective = Objective(REGISTRY.build(MSEConfig()), model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width)

    def step() -> None:
        loss = objective(model(x), x).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_step()

    return step


def seconds(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks architectures", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    steps = {name: training_step(name, args.width, args.latents, args.batch) for name in CASES}
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved: machine noise hits every case alike
        for name, step in steps.items():
            if name == MASKED:  # the general path: no affine decoder to sum prefix parts through
                with mock.patch("autoenc_cli.models.fc.FCAutoencoder.affine_decoder", return_value=None):
                    times[name].append(seconds(step, args.steps))
            else:
                times[name].append(seconds(step, args.steps))
    baseline = statistics.median(times[BASELINE])
    print(f"| training step, {args.width} -> {args.latents} latents, batch {args.batch} | ms (median) | vs top-k |")
    print("| --- | ---: | ---: |")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median * 1e3:.1f} | {median / baseline:.2f}x |")
