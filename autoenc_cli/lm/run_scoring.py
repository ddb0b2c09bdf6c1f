"""Loss recovered for a run trained on an activation cache (``data=activations``): at the end of the run
(``Job.results``), in ``autoenc eval``, and for every job of a stacked sweep.

The language model is the one the cache's manifest names, loaded again and refused unless its weights'
fingerprint is the manifest's (an SAE scored on another model would be scored on activations it never
saw). ``LossRecovered`` keeps what runs on the same cache share: the model, loaded once per cache and
device, and the clean, zero- and mean-ablated passes, run once for every SAE on the same cache and hook
(a stacked sweep ``expect``s all its jobs' SAEs before the first asks for its score).
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from autoenc_cli.data.activation_cache import ActivationCache
from autoenc_cli.data.vectors import Normalisation
from autoenc_cli.errors import DataError
from autoenc_cli.lm.scoring import Splice, SpliceScore, score_splices

log = logging.getLogger("autoenc")


@dataclass(frozen=True)
class HeldOut:
    """What an SAE is scored on: a cache's held-out text at one hook, on a device. SAEs with the same
    ``HeldOut`` share their clean, zero- and mean-ablated passes."""

    cache: Path  # resolved
    hook: str
    tokens: int  # held-out tokens asked for (> 0)
    device: str  # where the language model runs


def held_out(data: Any, device: Any, tokens: Optional[int] = None) -> Optional[HeldOut]:
    """What a run with ``data`` (its data config) is scored on: its cache's held-out text, ``tokens`` of it
    (None: ``data.heldout_tokens``); None when the run is not on an activation cache or 0 tokens are asked."""
    if not on_activation_cache(data):
        return None
    tokens = data.heldout_tokens if tokens is None else tokens
    if tokens == 0:
        return None
    cache = ActivationCache.open(Path(data.path))
    return HeldOut(cache.folder.resolve(), cache.hook(data.hook), tokens, str(device))


def on_activation_cache(data: Any) -> bool:
    """Whether a run on ``data`` (its data config) trained on a language model's activations."""
    from autoenc_cli.data.activations import ActivationsConfig

    return isinstance(data, ActivationsConfig)


@dataclass
class RunSAE:
    """A run's network as the SAE spliced into the language model."""

    name: str  # the run's folder: one score per run
    held_out: HeldOut
    network: torch.nn.Module  # an Autoencoder on normalised rows
    normalisation: Callable[[], Optional[Normalisation]]  # the run's data.normalize statistics, when needed

    def splice(self) -> Splice:
        return reconstruction_splice(self.network, self.normalisation())


def reconstruction_splice(network: torch.nn.Module, normalisation: Optional[Normalisation]) -> Splice:
    """Raw activations (batch, tokens, width) -> the network's reconstruction of each token's, in raw space:
    normalised as the run's rows were, reconstructed, the normalisation inverted."""
    device = next(network.parameters()).device

    def reconstruct(activation: torch.Tensor) -> torch.Tensor:
        rows = activation.reshape(-1, activation.shape[-1]).to(device=device, dtype=torch.float32)
        if normalisation is not None:
            rows = normalisation.apply(rows)
        reconstruction = network(rows).reconstruction
        if normalisation is not None:
            reconstruction = normalisation.invert(reconstruction)
        return reconstruction.reshape(activation.shape)

    return reconstruct


@contextmanager
def evaluating(networks: Iterable[torch.nn.Module]) -> Iterator[None]:
    """The networks in eval mode inside; each back in its own mode after."""
    modes = [(network, network.training) for network in networks]
    for network, _ in modes:
        network.eval()
    try:
        yield
    finally:
        for network, training in modes:
            network.train(training)


def checked_language_model(cache: ActivationCache, device: str) -> Any:
    """The language model the cache was harvested from, refused unless its weights are the same."""
    from autoenc_cli.lm.models import load_language_model

    described = cache.manifest.identity["model"]
    lm = load_language_model(described, device)
    fingerprint = lm.fingerprint()
    if fingerprint != described.get("fingerprint"):
        raise DataError(
            f"the language model {described.get('name')} is not the one the activation cache '{cache.folder}' was "
            f"harvested from: its weights' fingerprint is {fingerprint[:12]}..., the cache's "
            f"{str(described.get('fingerprint'))[:12]}...; loss recovered needs that model (restore it, or harvest "
            "the cache again)"
        )
    return lm


def heldout_contexts(cache: ActivationCache, tokens: int) -> np.ndarray:
    """The first whole held-out contexts that hold ``tokens`` tokens (counted as harvest counts them, the
    BOS tokens included), or every one when the cache holds fewer (a note says so)."""
    contexts = cache.heldout_tokens()
    if contexts.ndim != 2 or not contexts.size:
        raise DataError(
            f"the activation cache '{cache.folder}' holds no held-out text (harvested with heldout_tokens=0?): "
            "nothing to score loss recovered on; data.heldout_tokens=0 (autoenc eval: heldout_tokens=0) skips it"
        )
    context_size = contexts.shape[1]
    wanted = math.ceil(tokens / context_size)
    if wanted > len(contexts):
        from autoenc_cli.artifacts.console import console

        note = (
            f"loss recovered: {tokens:,} held-out tokens asked for, but the activation cache '{cache.folder}' holds "
            f"{contexts.size:,}; scored on all of them"
        )
        log.warning(note)
        console.print(f"[yellow]note[/]: {note}", soft_wrap=True)
    return contexts[:wanted]


class LossRecovered:
    """Scores runs' SAEs on their caches' language models, sharing the model and the passes that do not
    depend on the SAE between runs on the same cache (a stacked sweep's jobs)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Any] = {}  # (model as the manifest names it, device) -> LanguageModel
        self.waiting: dict[HeldOut, dict[str, RunSAE]] = {}  # expected, not scored yet
        self.scores: dict[HeldOut, dict[str, SpliceScore]] = {}
        self.failed: dict[HeldOut, Exception] = {}  # a group that could not be scored: each of its runs says why
        self.normalisations: dict[str, Optional[Normalisation]] = {}  # data config -> the runs' statistics

    def expect(self, sae: Optional[RunSAE]) -> None:
        """``sae`` will ask for its score: scored with the first SAE on the same held-out text that asks."""
        if sae is not None:
            self.waiting.setdefault(sae.held_out, {})[sae.name] = sae

    def score(self, sae: RunSAE) -> SpliceScore:
        held = sae.held_out
        if held in self.failed:
            raise self.failed[held]
        done = self.scores.setdefault(held, {})
        if sae.name not in done:
            group = {**self.waiting.pop(held, {}), sae.name: sae}
            try:
                done.update(self._score_group(held, group))
            except Exception as error:
                self.failed[held] = error
                raise
        return done[sae.name]

    def normalisation(self, data: Any, fingerprint: Optional[str]) -> Optional[Normalisation]:
        """The data.normalize statistics a run on ``data`` trained with, derived again from the cache (once
        for every run on the same data), which must still hold the rows the run trained on (``fingerprint``)."""
        from autoenc_cli.data.vectors import run_normalisation

        key = repr(data)
        if key not in self.normalisations:
            normalisation, now = run_normalisation(data)
            if fingerprint is not None and now != fingerprint:
                raise DataError(
                    f"the activation cache '{data.path}' changed since the run loaded it (a harvest added rows?): "
                    "its normalisation statistics are no longer the run's"
                )
            self.normalisations[key] = normalisation
        return self.normalisations[key]

    def _score_group(self, held: HeldOut, saes: dict[str, RunSAE]) -> dict[str, SpliceScore]:
        from autoenc_cli.artifacts.console import console

        cache = ActivationCache.open(held.cache)
        contexts = heldout_contexts(cache, held.tokens)  # before the model loads: a cache without any is quick to say
        lm = self._model(cache, held.device)
        splices = {name: sae.splice() for name, sae in saes.items()}
        passes = 3 + len(splices)  # clean, zero- and mean-ablated, one spliced per SAE
        console.print(
            f"loss recovered: {contexts.size:,} held-out tokens at {held.hook}, {passes} passes of the language model "
            f"({len(splices)} SAE{'s' if len(splices) > 1 else ''})",
            soft_wrap=True,
        )
        with evaluating(sae.network for sae in saes.values()):
            return score_splices(lm, held.hook, contexts, cache.manifest.mean(held.hook), splices)

    def _model(self, cache: ActivationCache, device: str) -> Any:
        key = (json.dumps(cache.manifest.identity["model"], sort_keys=True), device)
        if key not in self.models:
            from autoenc_cli.artifacts.console import console

            console.print(f"loss recovered: loading {cache.manifest.identity['model'].get('name')} ...", soft_wrap=True)
            self.models[key] = checked_language_model(cache, device)
        return self.models[key]


def record_fields(score: SpliceScore) -> dict[str, Any]:
    """The score as a run's records name it (``autoenc_cli.training.records.lm_scores``)."""
    return {
        "loss_recovered": score.loss_recovered,
        "lm_kl": score.kl,
        "lm_ce_clean": score.ce_clean,
        "lm_ce_spliced": score.ce_spliced,
        "lm_ce_zero_ablated": score.ce_zero_ablated,
        "lm_ce_mean_ablated": score.ce_mean_ablated,
        "lm_heldout_tokens": score.tokens,
    }


def with_score(record: Any, score: Optional[SpliceScore]) -> Any:
    """``record`` (a RunSummary or an EvalReport) with the score's fields set."""
    if score is not None:
        for name, value in record_fields(score).items():
            setattr(record, name, value)
    return record
