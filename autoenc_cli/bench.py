"""Benchmarks, each a ratio against a baseline measured side by side in the same process.

- Training throughput: autoenc's loop against a bare hand-written PyTorch loop, same model, device
  tensors and batch size, interleaved so machine noise hits both alike (median of repeats).
- Sparsity layers: forward+backward of the batched top-k and lifetime layers against the per-sample
  (per-unit) Python-loop masks a tutorial would write.
- Noise: batched corruption on tensors against a per-sample Dataset transform behind a DataLoader.

    python -m autoenc_cli.bench [--repeats 5] [--epochs 3] [--device auto] [--out bench.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from autoenc_cli.experiment import Experiment, build_experiment
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.sparsity.hard import Lifetime, TopK
from autoenc_cli.training.loop import Trainer

CASES: dict[str, list[str]] = {
    "fc 784-64 (default)": [],
}


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="autoenc_cli.configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def bare_loop(experiment: Experiment, epochs: int) -> Callable[[], int]:
    """What one would write by hand: shuffled index slices, forward, MSE, backward, step."""
    model, images = experiment.model, experiment.data.train.images
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size, generator = experiment.run.data.batch_size, torch.Generator().manual_seed(0)

    def run() -> int:
        seen = 0
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=generator).to(images.device)
            for start in range(0, images.shape[0], batch_size):
                batch = images[order[start : start + batch_size]]
                loss = F.mse_loss(model(batch).reconstruction, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += batch.shape[0]
        return seen

    return run


def autoenc_loop(experiment: Experiment, epochs: int) -> Callable[[], int]:
    trainer = Trainer(experiment)
    trainer.optimizer = torch.optim.Adam(experiment.model.parameters(), lr=1e-3)

    def run() -> int:
        before = trainer.result.samples_seen
        for _ in range(epochs):
            trainer._train_epoch()
        return trainer.result.samples_seen - before

    return run


def throughput(run: Callable[[], int], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    seen = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def measure(overrides: Sequence[str], device: str, epochs: int, repeats: int) -> dict[str, float]:
    experiments = [build_experiment(resolve(compose([*overrides, f"trainer.device={device}"]))) for _ in range(2)]
    loops = {"autoenc": autoenc_loop(experiments[0], epochs), "bare": bare_loop(experiments[1], epochs)}
    for loop in loops.values():  # warm-up
        loop()
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            samples[name].append(throughput(loop, experiments[0].device))
    return {name: statistics.median(values) for name, values in samples.items()}


def naive_topk(code: torch.Tensor, k: int) -> torch.Tensor:
    """The per-sample loop: one topk and one mask row per sample."""
    mask = torch.zeros_like(code)
    for row in range(code.shape[0]):
        mask[row, code[row].topk(k).indices] = 1.0
    return code * mask


def naive_lifetime(code: torch.Tensor, k: int) -> torch.Tensor:
    """The per-unit loop: one topk over the batch for each code unit."""
    mask = torch.zeros_like(code)
    for unit in range(code.shape[1]):
        mask[code[:, unit].topk(k).indices, unit] = 1.0
    return code * mask


def forward_backward_seconds(layer: Callable[[torch.Tensor], torch.Tensor], code: torch.Tensor, repeats: int) -> float:
    timings = []
    for _ in range(repeats + 1):  # the first call warms up
        x = code.detach().clone().requires_grad_(True)
        if x.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        layer(x).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:])


def sparsity_layer_rows(device: torch.device, repeats: int) -> list[str]:
    rows = []
    for batch, units in ((512, 64), (4096, 4096)):
        code = torch.randn(batch, units, generator=torch.Generator().manual_seed(0)).to(device)
        k_sample, k_unit = 16, max(1, round(0.05 * batch))
        cases = {
            f"topk k={k_sample}": (TopK(k_sample), lambda x, k=k_sample: naive_topk(x, k)),
            f"lifetime k={k_unit} (5%)": (Lifetime(k_unit, 0.05).train(), lambda x, k=k_unit: naive_lifetime(x, k)),
        }
        for name, (layer, naive) in cases.items():
            fast, slow = forward_backward_seconds(layer, code, repeats), forward_backward_seconds(naive, code, repeats)
            rows.append(f"| {name} | {batch}x{units} | {fast * 1e3:.3f} | {slow * 1e3:.1f} | {slow / fast:,.0f}x |")
    return rows


def noise_rows(repeats: int) -> list[str]:
    """Batched noise on device tensors against a per-sample Dataset transform behind a DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k
    from autoenc_cli.noise.corruptions import GaussianNoise, MaskingNoise

    images = load_mnist_5k(Mnist5kConfig()).train.images
    batch_size = 128

    class NoisyDataset(Dataset):
        def __init__(self, corrupt: Callable[[torch.Tensor], torch.Tensor]) -> None:
            self.corrupt = corrupt

        def __len__(self) -> int:
            return images.shape[0]

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            clean = images[index]
            return self.corrupt(clean), clean

    def naive_mask(clean: torch.Tensor) -> torch.Tensor:
        pixels = clean.shape[-1] * clean.shape[-2]
        chosen = torch.randperm(pixels)[: round(0.5 * pixels)]
        noisy = clean.clone().view(clean.shape[0], -1)
        noisy[:, chosen] = 0.0
        return noisy.view_as(clean)

    cases = {
        "gaussian variance 0.5": (GaussianNoise(0.0, 0.5, clip=False), lambda x: x + 0.5**0.5 * torch.randn_like(x)),
        "mask rate 0.5": (MaskingNoise(0.5, 0.0), naive_mask),
    }
    rows = []
    for name, (batched, per_sample) in cases.items():
        generator = torch.Generator().manual_seed(0)

        def run_batched(batched: Callable = batched, generator: torch.Generator = generator) -> None:
            for start in range(0, images.shape[0], batch_size):
                batched(images[start : start + batch_size], generator)

        def run_loader(per_sample: Callable[[torch.Tensor], torch.Tensor] = per_sample) -> None:
            for _ in DataLoader(NoisyDataset(per_sample), batch_size=batch_size, shuffle=True):
                pass

        fast = statistics.median(timed(run_batched) for _ in range(repeats))
        slow = statistics.median(timed(run_loader) for _ in range(repeats))
        rows.append(f"| {name} | {images.shape[0] / fast:,.0f} | {images.shape[0] / slow:,.0f} | {slow / fast:,.0f}x |")
    return rows


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    device_name = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device != "cpu"
        else platform.processor() or platform.machine()
    )
    lines = [
        f"Machine: {device_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"median of {args.repeats} repeats x {args.epochs} epochs.",
        "",
        "| model | autoenc loop (samples/s) | bare loop (samples/s) | autoenc / bare |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, overrides in CASES.items():
        result = measure(overrides, args.device, args.epochs, args.repeats)
        lines.append(
            f"| {name} | {result['autoenc']:,.0f} | {result['bare']:,.0f} | {result['autoenc'] / result['bare']:.2f}x |"
        )
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    lines += [
        "",
        "| sparsity layer | input | batched fwd+bwd (ms) | Python-loop fwd+bwd (ms) | speed-up |",
        "| --- | --- | ---: | ---: | ---: |",
        *sparsity_layer_rows(device, args.repeats),
        "",
        "| noise (an epoch of the 4,000 training digits, CPU) | batched (samples/s) "
        "| per-sample Dataset transform (samples/s) | speed-up |",
        "| --- | ---: | ---: | ---: |",
        *noise_rows(args.repeats),
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
