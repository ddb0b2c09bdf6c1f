"""Loss recovered: what a sparse autoencoder does to the language model it was trained on, as the field
judges it (Bricken et al. 2023; SAELens, EleutherAI's sparsify and dictionary_learning report the same).

The model reads held-out contexts four ways: clean; with the hook's activation replaced by an SAE's
reconstruction (spliced); replaced by zeros (zero-ablated); replaced by the cache's mean activation
(mean-ablated). Each way is scored by its mean next-token cross-entropy over the same positions: every
predicted one (the logits at positions 0 .. T-2 against the tokens at 1 .. T-1). Then

    loss_recovered = (ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean)

is 1 for a perfect reconstruction and 0 for one no better than deleting the activation, and ``kl`` is the
mean over those positions of KL(clean next-token distribution || spliced one), in nats.

Every position is replaced except 0: the beginning-of-sequence token is an attention sink with a norm far
larger than any other token's, the cache holds no row of it (an SAE never saw one), and every context
starts with it; it keeps the model's own activation in every variant.

The clean, zero- and mean-ablated passes do not depend on the SAE: ``score_splices`` runs them once per
batch of contexts for all the SAEs it is given, and one spliced pass per SAE. A batch's clean
log-probabilities are kept only while that batch's spliced passes are scored against them, so memory
grows with the batch, never with the held-out text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from autoenc_cli.errors import DataError
from autoenc_cli.lm.hooks import spliced
from autoenc_cli.lm.models import LanguageModel

# An SAE as scoring sees it: raw activations (batch, tokens, width) -> their reconstruction, same shape
# and space (the run's normalisation applied before its network and inverted after).
Splice = Callable[[torch.Tensor], torch.Tensor]

# Contexts per forward pass, when not given: as many as keep one (contexts, tokens, vocabulary) float32
# tensor of logits within this many values (2**25: 128 MiB). A pass holds a few such tensors at once.
LOGIT_BUDGET = 2**25


@dataclass(frozen=True)
class SpliceScore:
    """One SAE spliced into the model at its hook, on held-out text (cross-entropies in nats per token)."""

    ce_clean: float  # the model as it is
    ce_spliced: float  # the hook's activation replaced by the SAE's reconstruction (position 0 kept)
    ce_zero_ablated: float  # replaced by zeros
    ce_mean_ablated: float  # replaced by the mean activation of the cache
    kl: float  # mean KL(clean next-token distribution || spliced one), nats
    tokens: int  # held-out tokens the model read: contexts x context size, the BOS tokens included
    predictions: int  # next-token predictions averaged over (the same for every variant): contexts x (size - 1)

    @property
    def loss_recovered(self) -> Optional[float]:
        """(zero - spliced) / (zero - clean); None where zero-ablating the hook changes nothing (no scale)."""
        return recovered(self.ce_clean, self.ce_spliced, self.ce_zero_ablated)


def recovered(clean: float, spliced_loss: float, zero_ablated: float) -> Optional[float]:
    span = zero_ablated - clean
    return (zero_ablated - spliced_loss) / span if span != 0 else None


@dataclass
class _Totals:
    """Float64 sums over the positions scored so far."""

    cross_entropy: float = 0.0
    kl: float = 0.0

    def add(self, cross_entropy: torch.Tensor, kl: Optional[torch.Tensor] = None) -> None:
        self.cross_entropy += float(cross_entropy.double().sum())
        if kl is not None:
            self.kl += float(kl.double().sum())


def score_splices(
    lm: LanguageModel,
    hook: str,
    contexts: np.ndarray,
    mean: np.ndarray,
    saes: Mapping[str, Splice],
    batch_size: Optional[int] = None,
) -> dict[str, SpliceScore]:
    """Each SAE of ``saes`` (name -> ``Splice``) spliced into ``lm`` at ``hook``, scored on ``contexts``
    ((H, T) token ids, each starting with the beginning-of-sequence token) against the clean model and
    against zero- and mean-ablation (``mean``: the cache's (width,) mean activation). ``batch_size``:
    contexts per forward pass (None: as ``LOGIT_BUDGET`` allows)."""
    contexts = _checked_contexts(contexts)
    batch_size = batch_size or contexts_per_batch(lm, contexts.shape[1])
    mean_activation = torch.as_tensor(np.asarray(mean), device=lm.device)
    clean, zero, averaged = _Totals(), _Totals(), _Totals()
    per_sae = {name: _Totals() for name in saes}
    with torch.inference_mode():
        for start in range(0, len(contexts), batch_size):
            ids = torch.as_tensor(contexts[start : start + batch_size], dtype=torch.long, device=lm.device)
            targets = ids[:, 1:]
            clean_log_probs = _next_token_log_probs(lm, ids)
            clean.add(_cross_entropy(clean_log_probs, targets))
            zero.add(_cross_entropy(_spliced_log_probs(lm, hook, ids, torch.zeros_like), targets))
            averaged.add(_cross_entropy(_spliced_log_probs(lm, hook, ids, _filled_with(mean_activation)), targets))
            for name, sae in saes.items():
                log_probs = _spliced_log_probs(lm, hook, ids, sae)
                per_sae[name].add(_cross_entropy(log_probs, targets), _kl(clean_log_probs, log_probs))
                del log_probs
    predictions = contexts.shape[0] * (contexts.shape[1] - 1)
    return {
        name: SpliceScore(
            ce_clean=clean.cross_entropy / predictions,
            ce_spliced=totals.cross_entropy / predictions,
            ce_zero_ablated=zero.cross_entropy / predictions,
            ce_mean_ablated=averaged.cross_entropy / predictions,
            kl=totals.kl / predictions,
            tokens=contexts.size,
            predictions=predictions,
        )
        for name, totals in per_sae.items()
    }


def _checked_contexts(contexts: np.ndarray) -> np.ndarray:
    contexts = np.asarray(contexts)
    if contexts.ndim != 2 or contexts.shape[0] < 1 or contexts.shape[1] < 2 or contexts.dtype.kind not in "iu":
        raise DataError(
            f"held-out text must be (contexts, tokens) token ids with at least 1 context of 2 tokens; "
            f"got {contexts.dtype} {contexts.shape}"
        )
    return contexts


def contexts_per_batch(lm: LanguageModel, context_size: int) -> int:
    vocabulary = lm.model.get_output_embeddings().weight.shape[0]
    return max(1, LOGIT_BUDGET // (context_size * vocabulary))


def _next_token_log_probs(lm: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """(batch, T - 1, vocabulary) float32 log-probabilities of the token after each position but the last."""
    logits = lm.model(input_ids=ids, use_cache=False).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def _spliced_log_probs(lm: LanguageModel, hook: str, ids: torch.Tensor, replacement: Splice) -> torch.Tensor:
    """``_next_token_log_probs`` with the hook's activation at every position but 0 replaced by
    ``replacement(activation at those positions)``."""
    with spliced(lm.model, hook, lambda activation: _after_first(activation, replacement)):
        return _next_token_log_probs(lm, ids)


def _after_first(activation: torch.Tensor, replacement: Splice) -> torch.Tensor:
    """The activation with positions 1 .. T - 1 replaced; position 0 (the BOS token) kept."""
    rest = activation[:, 1:]
    replaced = replacement(rest)
    if replaced.shape != rest.shape:
        raise DataError(
            f"a replacement of the activation gave shape {tuple(replaced.shape)} for {tuple(rest.shape)}; the SAE "
            "does not fit this hook"
        )
    return torch.cat([activation[:, :1], replaced.to(device=activation.device, dtype=activation.dtype)], dim=1)


def _filled_with(mean: torch.Tensor) -> Splice:
    def fill(activation: torch.Tensor) -> torch.Tensor:
        if mean.shape != activation.shape[-1:]:
            raise DataError(
                f"the cache's mean activation has {mean.shape[0]} values, but the hook's activation has "
                f"{activation.shape[-1]}: the cache is not of this model's hook"
            )
        return mean.to(activation.dtype).expand_as(activation)

    return fill


def _cross_entropy(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(batch, T - 1) next-token cross-entropy, nats."""
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _kl(clean_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """(batch, T - 1) KL(clean || spliced) per position, nats (exactly 0 where the two are equal)."""
    return F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none").sum(-1)
