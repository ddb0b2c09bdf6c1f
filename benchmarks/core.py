"""Benchmarks, each a ratio against a baseline measured side by side in the same process.

- Training throughput, per model: autoenc's loop against (a) a bare hand-written PyTorch loop on the
  same device tensors and (b) the naive pipeline a tutorial would write (a DataLoader over a
  per-sample Dataset, per-sample noise transforms, Python-loop top-k masks), interleaved so machine
  noise hits all alike (median of repeats); plus each loop's peak memory, measured in a child process.
- Sparsity layers: forward+backward of the batched top-k and lifetime layers against the per-sample
  (per-unit) Python-loop masks a tutorial would write.
- Noise: batched corruption on tensors against a per-sample Dataset transform behind a DataLoader.
- Loggers: whole fits with each experiment tracker against the same fit with none (figures off, so this is
  the cost of logging the loss every log_every steps and the metrics every epoch); ``--loggers`` runs only this.

    python -m benchmarks core [--repeats 5] [--epochs 3] [--device auto] [--out bench.md] [--loggers]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from autoenc_cli.build import build_model, build_parts
from autoenc_cli.compose import run_config
from autoenc_cli.sparsity.hard import Lifetime, LifetimeConfig, TopK, TopKConfig
from autoenc_cli.training.loop import Trainer
from autoenc_cli.training.parts import RunParts

CASES: dict[str, list[str]] = {
    "fc 784-64 (default)": [],
    "sparse_fc topk k=16": ["model=sparse_fc", "sparsity=topk", "k=16"],
    "conv (default)": ["model=conv"],
    "deep_fc 784-1000-500-250-30": ["experiment=deep_fc", "schedule=standard", "model.tied=false"],
    "fc + gaussian noise 0.5": ["noise=gaussian"],
}
LOOPS = ("autoenc", "bare", "naive")
REPOSITORY = Path(__file__).resolve().parents[1]  # where `python -m benchmarks` finds this package


def bare_loop(parts: RunParts, epochs: int) -> Callable[[], int]:
    """What one would write by hand: shuffled index slices, forward, MSE, backward, step."""
    model, images = parts.model, parts.data.train.images
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size, generator = parts.config.data.batch_size, torch.Generator().manual_seed(0)
    noise_generator = torch.Generator(device=images.device).manual_seed(1)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for start in range(0, images.shape[0], batch_size):
            batch = images[order[start : start + batch_size]]
            yield parts.noise(batch, noise_generator), batch

    return lambda: train_on(model, optimizer, batches, epochs)


def train_on(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    epochs: int,
) -> int:
    """The hand-written step: forward, MSE against the clean batch, backward, step. Returns samples seen."""
    seen = 0
    for _ in range(epochs):
        for inputs, clean in batches():
            loss = F.mse_loss(model(inputs).reconstruction, clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += clean.shape[0]
    return seen


class NaiveTopK(torch.nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return naive_topk(code, self.k)


def naive_loop(parts: RunParts, epochs: int) -> Callable[[], int]:
    """The tutorial pipeline: per-sample Dataset + DataLoader from host memory, per-sample noise, and a
    per-sample Python loop for top-k."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import functional as TF

    model, device = parts.model, parts.device
    if isinstance(model.code_transform, TopK):  # the same network with the per-sample loop as its top-k
        model = build_model(parts.config, parts.data.input_shape, NaiveTopK(model.code_transform.k)).to(device)
    # Stored as a tutorial would: uint8 HxWxC arrays, turned into tensors one sample at a time.
    images = (parts.data.train.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    noise = parts.noise

    class PerSample(Dataset):
        def __len__(self) -> int:
            return images.shape[0]

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            clean = TF.to_tensor(images[index])
            return (noise(clean[None])[0] if noise.active else clean), clean

    loader = DataLoader(PerSample(), batch_size=parts.config.data.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, clean in loader:
            yield inputs.to(device), clean.to(device)

    return lambda: train_on(model, optimizer, batches, epochs)


def autoenc_loop(parts: RunParts, epochs: int) -> Callable[[], int]:
    trainer = Trainer(parts)
    trainer.optimizer = torch.optim.Adam(parts.model.parameters(), lr=1e-3)

    def run() -> int:
        before = trainer.result.samples_seen
        for _ in range(epochs):
            trainer.train_epoch()
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


LOOP_BUILDERS = {"autoenc": autoenc_loop, "bare": bare_loop, "naive": naive_loop}


def build_loop(name: str, overrides: Sequence[str], device: str, epochs: int) -> tuple[Callable[[], int], RunParts]:
    parts = build_parts(run_config([*overrides, f"trainer.device={device}"]))
    return LOOP_BUILDERS[name](parts, epochs), parts


def measure(overrides: Sequence[str], device: str, epochs: int, repeats: int) -> dict[str, float]:
    built = {name: build_loop(name, overrides, device, epochs) for name in LOOPS}
    for loop, _ in built.values():  # warm-up
        loop()
    samples: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(repeats):
        for name, (loop, parts) in built.items():
            samples[name].append(throughput(loop, parts.device))
    return {name: statistics.median(values) for name, values in samples.items()}


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_child(case: str, loop_name: str, device: str, epochs: int) -> None:
    """Run one loop alone and print its peak memory in MiB: CUDA allocations, or, on the CPU, the
    highest resident set seen by a sampling thread above the resident set before the loop."""
    import threading

    loop, parts = build_loop(loop_name, CASES[case], device, epochs)
    if parts.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loop()
        print(torch.cuda.max_memory_allocated() / 2**20)
        return
    baseline, peak, done = resident_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    loop()
    done.set()
    sampler.join()
    print(max(peak[0], resident_mib()) - baseline)


def peak_memory(case: str, loop_name: str, device: str) -> float:
    import subprocess
    import sys

    command = [sys.executable, "-m", "benchmarks", "core", "--memory-of", case, loop_name, "--device", device]
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPOSITORY).stdout
    return float(output.strip().splitlines()[-1])


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
            f"topk k={k_sample}": (TopK(TopKConfig(k=k_sample), units), lambda x, k=k_sample: naive_topk(x, k)),
            f"lifetime k={k_unit} (5%)": (
                Lifetime(LifetimeConfig(k=k_unit), units).train(),
                lambda x, k=k_unit: naive_lifetime(x, k),
            ),
        }
        for name, (layer, naive) in cases.items():
            fast, slow = forward_backward_seconds(layer, code, repeats), forward_backward_seconds(naive, code, repeats)
            rows.append(f"| {name} | {batch}x{units} | {fast * 1e3:.3f} | {slow * 1e3:.1f} | {slow / fast:,.0f}x |")
    return rows


def noise_rows(repeats: int) -> list[str]:
    """Batched noise on device tensors against a per-sample Dataset transform behind a DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k
    from autoenc_cli.noise.corruptions import GaussianConfig, GaussianNoise, MaskConfig, MaskingNoise

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
        "gaussian variance 0.5": (
            GaussianNoise(GaussianConfig(variance=0.5)),
            lambda x: x + 0.5**0.5 * torch.randn_like(x),
        ),
        "mask rate 0.5": (MaskingNoise(MaskConfig(rate=0.5)), naive_mask),
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


def logger_cases() -> dict[str, list[str]]:
    """None, each registered tracker alone, and all of them, figures off: the per-step and per-epoch cost."""
    from autoenc_cli.registry import REGISTRY

    trackers = [name for name in REGISTRY.names("logger") if name != "none"]
    return {"none": [], **{name: [name] for name in trackers}, f"all {len(trackers)}": trackers}


def logged_fit_seconds(loggers: Sequence[str], root: str, device: str, epochs: int) -> tuple[float, int]:
    """Seconds of one fit of the default model with ``loggers`` (started and finished outside the timing)
    and the optimizer steps it took."""
    import uuid

    from autoenc_cli.loggers.run_loggers import RunLoggers
    from autoenc_cli.training.records import RunSummary

    overrides = [f"logger=[{','.join(loggers)}]"] if loggers else []
    overrides += [f"logger.{name}.figures_every=0" for name in loggers]
    overrides += [f"trainer.device={device}", f"trainer.epochs={epochs}", "trainer.figures=false"]
    overrides.append(f"output_root={root}")
    parts = build_parts(run_config(overrides))
    folder = Path(root) / uuid.uuid4().hex
    folder.mkdir()
    run_loggers = RunLoggers.build(parts, folder, folder.name, None, None)
    run_loggers.start()
    trainer = Trainer(parts, [run_loggers])
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    run_loggers.finish(RunSummary(status="completed"), [], trainer.global_step)
    return seconds, trainer.global_step


def logger_rows(device: str, epochs: int, repeats: int) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="autoenc-bench-") as root:
        cases = logger_cases()
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        steps = 0
        for repeat in range(repeats + 1):  # interleaved; the first round warms up
            for name, loggers in cases.items():
                elapsed, steps = logged_fit_seconds(loggers, root, device, epochs)
                if repeat:
                    seconds[name].append(elapsed)
    base = statistics.median(seconds["none"])
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        per_step = (median - base) / steps * 1e6
        rows.append(f"| {name} | {median:.3f} | {median / base:.3f}x | {per_step:+.0f} |")
    return rows


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks core", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--memory-of", nargs=2, metavar=("CASE", "LOOP"), help=argparse.SUPPRESS)
    parser.add_argument("--loggers", action="store_true", help="only the experiment trackers' overhead")
    args = parser.parse_args(argv)
    if args.memory_of:
        peak_memory_child(*args.memory_of, args.device, epochs=1)
        return
    if args.loggers:
        emit(logger_table(args), args.out)
        return
    device_name = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device != "cpu"
        else platform.processor() or platform.machine()
    )
    lines = [
        f"Machine: {device_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"median of {args.repeats} repeats x {args.epochs} epochs.",
        "",
        "| model | autoenc (samples/s) | bare loop | naive pipeline | autoenc / bare | autoenc / naive "
        "| peak MiB autoenc / bare / naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, overrides in CASES.items():
        result = measure(overrides, args.device, args.epochs, args.repeats)
        memory = (
            "n/a" if args.no_memory else " / ".join(f"{peak_memory(name, loop, args.device):.0f}" for loop in LOOPS)
        )
        lines.append(
            f"| {name} | {result['autoenc']:,.0f} | {result['bare']:,.0f} | {result['naive']:,.0f} "
            f"| {result['autoenc'] / result['bare']:.2f}x | {result['autoenc'] / result['naive']:.1f}x | {memory} |"
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
        "",
        *logger_table(args),
    ]
    emit(lines, args.out)


def logger_table(args: argparse.Namespace) -> list[str]:
    return [
        f"| logger (default fc, {args.epochs} epochs, log_every 10, figures off) | fit seconds | vs none "
        "| overhead per step (us) |",
        "| --- | ---: | ---: | ---: |",
        *logger_rows(args.device, args.epochs, args.repeats),
    ]


def emit(lines: list[str], out: str | None) -> None:
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
