"""``autoenc harvest``: a language model's activations at one or more hooks, captured from text into an
activation cache (``autoenc_cli.data.activation_cache``) that ``autoenc train data=activations data.path=DIR`` reads.

    autoenc harvest lm=smollm2 'lm.hooks=[model.layers.15]' text=stdlib tokens=2_000_000 out=DIR

One forward pass per batch of contexts serves every hook, and stops after the deepest one (the layers
after it do not run). Rows are buffered one shard at a time (memory stays flat in ``tokens``), shuffled
within the shard (seeded), and published atomically; the manifest lists a shard only once every hook's
file of it is in place. Ctrl-C stops after the current batch; the same command continues after the last
finished shard and gives the same bytes as an uninterrupted capture. A folder holding a cache of another
model, tokenizer, hook, text or setting is refused: caches are never mixed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import MISSING

from autoenc_cli.data.activation_cache import DTYPES, Manifest, Shard, read_manifest, shard_contexts, write_manifest
from autoenc_cli.errors import DataError, UserError
from autoenc_cli.folder_layout import CACHE_HELDOUT, CACHE_MANIFEST, CACHE_SHARD_PREFIX, CacheLayout
from autoenc_cli.lm.models import LMConfig
from autoenc_cli.output_paths import FolderOutputs, check_folder_out, claimed_folder_out, out_path
from autoenc_cli.schema import choice, number

BOS_POSITIONS = 1  # position 0 of a context (the beginning-of-sequence token) is not cached


@dataclass
class HarvestConfig:
    lm: LMConfig = field(default_factory=LMConfig)  # the model, its hooks and how text becomes contexts
    # a .txt or .jsonl file, a folder of them, or a text that ships with Python: stdlib | pydoc
    text: str = "stdlib"
    tokens: int = number(2_000_000, ge=1)  # activation rows (tokens) to cache per hook, in whole contexts
    out: str = MISSING  # the cache folder: new, empty, or a cache of the same settings (continued)
    dtype: str = choice("float16", DTYPES)  # how activations are stored (float16 halves the disk)
    seed: int = number(0, ge=0)  # the order of the text's files and of the rows in each shard
    shard_tokens: int = number(65_536, ge=1)  # rows per shard file (whole contexts); a Ctrl-C loses at most one
    heldout_tokens: int = number(16_384, ge=0)  # tokens of text set aside for scoring (loss recovered), never cached
    threads: Optional[int] = number(None, ge=1)  # CPU threads for torch; null: torch's default

    def identity(self, model: dict[str, Any], tokenizer: str, bos_id: int, text: dict[str, Any]) -> dict[str, Any]:
        """What a cache written with these settings is of (``Manifest.identity``)."""
        return {
            "model": model,
            "tokenizer": tokenizer,
            "hooks": list(self.lm.hooks),
            "context_size": self.lm.context_size,
            "bos_id": bos_id,
            "text": text,
            "seed": self.seed,
            "dtype": self.dtype,
            "shard_tokens": self.shard_tokens,
            "heldout_tokens": self.heldout_tokens,
        }


STAGED = re.compile(r"\..+\.\d+\.tmp")
SHARD = re.compile(rf"{re.escape(CACHE_SHARD_PREFIX)}\d+\.npy")


def is_cache_file(folder: Path, file: Path) -> bool:
    """Whether ``file`` is one autoenc harvest writes into a cache folder."""
    relative = file.relative_to(folder).parts
    if len(relative) == 1:
        return relative[0] in (CACHE_MANIFEST, CACHE_HELDOUT) or STAGED.fullmatch(relative[0]) is not None
    return len(relative) == 2 and (SHARD.fullmatch(relative[1]) or STAGED.fullmatch(relative[1])) is not None


CACHE_OUTPUTS = FolderOutputs(
    command="harvest",
    what="an activation cache",
    earlier="an activation cache",
    folder_for=f"for {CACHE_MANIFEST} and the shards",
    example="activations",
    is_earlier=is_cache_file,
    overwrite="the same settings, which continue it",
)


def main(argv: Sequence[str]) -> int:
    from autoenc_cli.evaluation.commands import compose_command

    config = compose_command("harvest", HarvestConfig, argv)
    harvest(config)
    return 0


def harvest(config: HarvestConfig) -> Manifest:
    from autoenc_cli.artifacts.console import console
    from autoenc_cli.lm.models import describe, load_language_model
    from autoenc_cli.lm.text import text_source

    out = out_path(config.out, CACHE_OUTPUTS.example)
    check_folder_out(out, True, CACHE_OUTPUTS)
    source = text_source(config.text)
    text = {**source.describe(), "fingerprint": source.fingerprint()}
    earlier = read_manifest(out) if out.is_dir() else None
    if earlier is not None:  # the cheap part of the check, before the model loads
        _refuse_other_settings(earlier.identity, config, text, out)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with claimed_folder_out(out, True, CACHE_OUTPUTS, "activation cache"):  # a second harvest here: refused now
        started = time.perf_counter()
        lm = load_language_model(describe(config.lm), config.lm.device)
        widths = _widths(lm, config.lm)
        model = {**lm.description, "fingerprint": lm.fingerprint()}
        identity = config.identity(model, lm.tokenizer_fingerprint(), lm.bos_id(config.lm.bos_token), text)
        loaded = f"loaded {lm.description['name']} in {time.perf_counter() - started:.1f}s; hooks {widths}"
        console.print(loaded, soft_wrap=True)
        manifest = read_manifest(out)
        if manifest is None:
            manifest = Manifest(identity, widths, config.tokens)
        else:
            _refuse(out, _differences(manifest.identity, identity))
            if manifest.complete and manifest.tokens >= config.tokens:
                held = f"out='{out}' already holds {manifest.tokens:,} tokens per hook: nothing to do"
                console.print(held, soft_wrap=True)
                return manifest
            manifest.target_tokens = max(config.tokens, manifest.tokens)
            manifest.exhausted = False
        Capture(config, lm, source, manifest, out).run()
    return manifest


def _widths(lm: Any, config: LMConfig) -> dict[str, int]:
    """Each hook's activation width, from a one-context pass (refusing a hook that is no module)."""
    from autoenc_cli.lm.hooks import capturing, forward_until_captured

    probe = torch.zeros((1, 2), dtype=torch.long, device=lm.device)
    with torch.inference_mode(), capturing(lm.model, config.hooks) as captured:
        forward_until_captured(lm.model, captured, input_ids=probe, use_cache=False)
    return {hook: int(captured[hook].shape[-1]) for hook in config.hooks}


SETTINGS = {  # identity key -> how the user sets it
    "hooks": "lm.hooks",
    "context_size": "lm.context_size",
    "seed": "seed",
    "dtype": "dtype",
    "shard_tokens": "shard_tokens",
    "heldout_tokens": "heldout_tokens",
}


def _refuse(out: Path, differences: list[str]) -> None:
    if differences:
        raise UserError(
            f"out='{out}' is an activation cache of other settings ({'; '.join(differences)}); a cache is never "
            "mixed: choose another out=, or repeat the cache's settings to continue it"
        )


def _refuse_other_settings(identity: dict[str, Any], config: HarvestConfig, text: dict[str, Any], out: Path) -> None:
    """What differs without loading the model: the settings and the text."""
    asked = config.identity(identity.get("model"), identity.get("tokenizer"), identity.get("bos_id"), text)
    _refuse(out, _differences(identity, asked))


def _differences(identity: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    differences = [
        f"{key}: cache {identity.get(name)!r}, asked {asked[name]!r}"
        for name, key in SETTINGS.items()
        if identity.get(name) != asked[name]
    ]
    for name, what in (("model", "lm (its weights)"), ("tokenizer", "the tokenizer"), ("text", "text")):
        if identity.get(name) != asked[name]:
            differences.append(f"{what}: cache {_short(identity.get(name))}, asked {_short(asked[name])}")
    if identity.get("bos_id") != asked["bos_id"]:
        differences.append(f"lm.bos_token: cache id {identity.get('bos_id')}, asked id {asked['bos_id']}")
    return differences


def _short(value: Any) -> str:
    if isinstance(value, dict):
        shown = {k: (v[:12] if k == "fingerprint" else v) for k, v in value.items() if k != "files"}
        return ", ".join(f"{k}={v}" for k, v in shown.items())
    return str(value)[:12] if value else "none"


class Capture:
    """The capture loop: held-out contexts first (once), then a shard at a time to the target."""

    def __init__(self, config: HarvestConfig, lm: Any, source: Any, manifest: Manifest, out: Path) -> None:
        self.config, self.lm, self.manifest, self.out = config, lm, manifest, out
        self.layout = CacheLayout(out)
        lm_config = config.lm
        self.body = lm_config.context_size - BOS_POSITIONS
        self.per_shard = shard_contexts(config.shard_tokens, lm_config.context_size, BOS_POSITIONS)
        from autoenc_cli.lm.text import contexts, token_stream

        pieces = token_stream(source.documents(config.seed), lm.tokenizer, manifest.identity["bos_id"])
        self.contexts = contexts(pieces, lm_config.context_size, manifest.identity["bos_id"])
        self.stop: Optional[str] = None

    def run(self) -> None:
        from autoenc_cli.artifacts.console import console

        self._remove_staged()
        self._heldout()
        skipped = sum(1 for _ in islice(self.contexts, self.manifest.contexts_done))
        if skipped < self.manifest.contexts_done:
            raise DataError(f"text={self.config.text} is shorter than the text the cache at '{self.out}' was made from")
        write_manifest(self.out, self.manifest)
        done = self.manifest.tokens
        whole_contexts = -(-self.manifest.target_tokens // self.body) * self.body  # what the capture ends at
        with TokenProgress(max(whole_contexts, done), done) as progress, self._stops():
            while not self.manifest.complete and self.stop is None:
                started = time.perf_counter()
                written = self._shard(progress.advance)
                self.manifest.seconds += time.perf_counter() - started
                if written:
                    write_manifest(self.out, self.manifest)
        if self.stop is not None:
            kept = f"holds {self.manifest.tokens:,} tokens in finished shards; run the same command to continue"
            if not self.manifest.shards:
                kept = (
                    f"holds no finished shard yet (a shard is shard_tokens={self.config.shard_tokens:,} tokens), so "
                    "the same command starts the capture over"
                )
            raise HarvestInterrupted(f"interrupted ({self.stop}): the cache at '{self.out}' {kept}")
        if self.manifest.exhausted:
            console.print(
                f"[yellow]note[/]: text={self.config.text} ended after {self.manifest.tokens:,} tokens "
                f"(tokens={self.config.tokens:,} asked); the cache holds them all",
                soft_wrap=True,
            )
        rate = (self.manifest.tokens - done) / max(self.manifest.seconds, 1e-9)
        console.print(
            f"activation cache: [bold]{self.out}[/] ({self.manifest.tokens:,} tokens x {len(self.manifest.hooks)} "
            f"hook(s), {len(self.manifest.shards)} shards, {rate:,.0f} tokens/s)",
            soft_wrap=True,
        )

    def _remove_staged(self) -> None:
        """Half-written files a killed harvest left (only this process writes here: the folder is claimed)."""
        for hook in self.manifest.hooks:
            folder = self.layout.hook(hook)
            for file in folder.iterdir() if folder.is_dir() else ():
                if STAGED.fullmatch(file.name):
                    file.unlink()

    def _heldout(self) -> None:
        """The first contexts of the stream, set aside once (scored, never cached)."""
        wanted = -(-self.config.heldout_tokens // self.config.lm.context_size)
        path = self.layout.heldout_tokens
        if path.is_file():
            kept = np.load(path)
            skipped = sum(1 for _ in islice(self.contexts, len(kept)))
            if skipped != len(kept):
                raise DataError(f"text={self.config.text} is shorter than the text the cache at '{self.out}' came from")
            return
        from autoenc_cli.io import atomic_write
        from autoenc_cli.lm.text import take

        heldout = take(self.contexts, wanted) if wanted else np.empty((0, self.config.lm.context_size), np.int64)
        if len(heldout) < wanted:
            raise DataError(
                f"text={self.config.text} gives {len(heldout)} contexts of {self.config.lm.context_size} tokens, "
                f"fewer than heldout_tokens={self.config.heldout_tokens} needs; give more text or lower heldout_tokens"
            )
        atomic_write(path, lambda handle: np.save(handle, heldout))
        self.manifest.heldout = {"contexts": len(heldout), "tokens": int(heldout.size)}

    def _shard(self, advance: Any) -> bool:
        """Capture, shuffle and publish the next shard; False when the text has ended or a stop came first."""
        from autoenc_cli.lm.text import take

        manifest = self.manifest
        remaining = -(-(manifest.target_tokens - manifest.tokens) // self.body)
        block = take(self.contexts, min(self.per_shard, remaining))
        if len(block) == 0:
            manifest.exhausted = True
            return False
        rows = self._activations(block, advance)
        if rows is None:
            return False
        index = len(manifest.shards)
        order = np.random.default_rng([self.config.seed, index]).permutation(len(block) * self.body)
        from autoenc_cli.io import atomic_write

        for hook, values in rows.items():
            if not np.isfinite(values).all():  # float16 holds at most 65,504
                raise DataError(
                    f"the activations at {hook} are not all finite in {self.config.dtype}; "
                    + ("use dtype=float32" if self.config.dtype == "float16" else "the model's output overflows")
                )
            shuffled = values[order]
            atomic_write(self.layout.shard(hook, index), lambda handle, array=shuffled: np.save(handle, array))
            sums = manifest.sums.get(hook) or [0.0] * manifest.widths[hook]
            manifest.sums[hook] = (np.asarray(sums) + shuffled.sum(axis=0, dtype=np.float64)).tolist()
        start = manifest.contexts_done
        manifest.shards.append(Shard(len(block) * self.body, (start, start + len(block))))
        if len(block) < min(self.per_shard, remaining):
            manifest.exhausted = True
        return True

    def _activations(self, block: np.ndarray, advance: Any) -> Optional[dict[str, np.ndarray]]:
        """Every hook's (contexts x (context_size - 1), width) rows of ``block``, batch by batch; None when a
        stop came first (the shard is dropped, to be captured again)."""
        from autoenc_cli.lm.hooks import capturing, forward_until_captured

        lm, batch = self.lm, self.config.lm.batch_size
        dtype = np.dtype(self.config.dtype)
        rows = {hook: np.empty((len(block), self.body, width), dtype) for hook, width in self.manifest.widths.items()}
        with torch.inference_mode(), capturing(lm.model, self.manifest.hooks) as captured:
            for start in range(0, len(block), batch):
                if self.stop is not None:
                    return None
                ids = torch.from_numpy(block[start : start + batch]).to(lm.device)
                forward_until_captured(lm.model, captured, input_ids=ids, use_cache=False)
                for hook, values in captured.items():
                    rows[hook][start : start + batch] = values[:, BOS_POSITIONS:].float().cpu().numpy()
                advance(ids.shape[0] * self.body)
        return {hook: values.reshape(-1, values.shape[-1]) for hook, values in rows.items()}

    def _stops(self) -> Any:
        from autoenc_cli.job import StopRequest, stop_on_signals

        capture = self

        class CaptureStop(StopRequest):
            def request(self, signal_name: str) -> None:
                from autoenc_cli.artifacts.console import console

                capture.stop = signal_name
                console.print(f"[yellow]{signal_name}[/]: stopping after the current batch (again: stop at once)")

            def requested(self) -> bool:
                return capture.stop is not None

        return stop_on_signals(CaptureStop())


class TokenProgress:
    """A bar of the tokens in the cache, with the rate of this harvest's capture."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from autoenc_cli.artifacts.console import console

        self.progress = Progress(
            TextColumn("[bold]harvest"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens {task.fields[rate]}"),
            TimeRemainingColumn(), console=console,
        )  # fmt: skip
        self.task = self.progress.add_task("harvest", total=total, completed=done, rate="")
        self.started, self.base, self.done = time.perf_counter(), done, done

    def __enter__(self) -> "TokenProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def advance(self, tokens: int) -> None:
        self.progress.advance(self.task, tokens)
        self.done += tokens
        rate = (self.done - self.base) / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, rate=f"{rate:,.0f}/s")


class HarvestInterrupted(UserError):
    """Ctrl-C or SIGTERM: the finished shards are kept; the same command continues."""

    exit_code = 130
