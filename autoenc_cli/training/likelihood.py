"""What a variational model is judged by, over a split: the ELBO and its two terms, the active units, and
the negative log-likelihood estimated by importance sampling (Burda, Grosse & Salakhutdinov 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.losses import BCELoss, MSELoss
from autoenc_cli.models.autoencoder import AutoencoderOutput
from autoenc_cli.models.vae import VariationalAutoencoder, gaussian_kl, gaussian_log_density

# Decoded samples held at once (samples x inputs): bounds the memory of k = 5,000 importance samples.
DECODED_AT_ONCE = 16_384
# A unit is active when the variance over the data of its posterior mean exceeds this (Burda et al. 2016).
ACTIVE_UNIT_VARIANCE = 0.01


@dataclass
class Likelihood:
    """A variational model's scores on a split, in nats per sample."""

    elbo: float  # E_q[log p(x|z)] - KL(q(z|x) || p(z)), the first term estimated with the importance samples
    reconstruction_nll: float  # -E_q[log p(x|z)]: the distortion
    kl: float  # KL(q(z|x) || p(z)), exact for Gaussians: the rate
    nll: float  # -log p(x) estimated with ``samples`` importance samples (at most -elbo)
    samples: int
    active_units: int  # units whose posterior mean varies across the split (Cov_x E_q[z_u] > 0.01)


def log_weights(
    model: VariationalAutoencoder,
    loss: MSELoss | BCELoss,
    inputs: torch.Tensor,
    samples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """For a batch: the importance weights log p(x, z_i) - log q(z_i | x) of ``samples`` draws z_i ~ q(z|x),
    (samples, batch); their log p(x | z_i) terms, (samples, batch); and the posterior (mean, log-variance),
    each (batch, code_dim)."""
    mean, log_variance = model.posterior(inputs)
    std, batch = (0.5 * log_variance).exp(), inputs.shape[0]
    chunk = max(1, DECODED_AT_ONCE // batch)
    weights, likelihoods = [], []
    for start in range(0, samples, chunk):  # chunks of samples, each decoded in one pass
        count = min(chunk, samples - start)
        noise = torch.randn(count, *mean.shape, generator=generator, device=mean.device)
        z = mean + noise * std  # (count, batch, code_dim)
        logits = model.decode_logits(z.flatten(0, 1))
        output = AutoencoderOutput(z, logits, model.output_activation(logits), z)
        targets = inputs.unsqueeze(0).expand(count, *inputs.shape).flatten(0, 1)
        log_likelihood = -loss.negative_log_likelihood(output, targets).view(count, batch)
        log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
        weights.append(log_likelihood + log_prior - gaussian_log_density(z, mean, log_variance))
        likelihoods.append(log_likelihood)
    return torch.cat(weights), torch.cat(likelihoods), (mean, log_variance)


@torch.inference_mode()
def likelihood(
    model: VariationalAutoencoder,
    loss: MSELoss | BCELoss,
    split: Split,
    batch_size: int,
    samples: int,
    seed: int,
) -> Likelihood:
    """The model's ELBO, its terms, the active units and the importance-sampled NLL over ``split``, with
    ``samples`` draws per input from a generator seeded with ``seed`` (the same numbers on a rerun)."""
    was_training = model.training
    model.eval()
    device = split.images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # -log p(x|z), KL, NLL
    means = []
    for clean in iterate_batches(split, batch_size):
        weights, log_likelihoods, (mean, log_variance) = log_weights(model, loss, clean, samples, generator)
        kl = gaussian_kl(mean, log_variance)
        nll = math.log(samples) - torch.logsumexp(weights, dim=0)
        sums += torch.stack([-log_likelihoods.mean(dim=0).sum(), kl.sum(), nll.sum()]).double()
        means.append(mean.double())
    model.train(was_training)
    reconstruction_nll, kl, nll = (sums / len(split)).tolist()
    active = (torch.cat(means).var(dim=0, unbiased=False) > ACTIVE_UNIT_VARIANCE).sum().item()
    return Likelihood(-reconstruction_nll - kl, reconstruction_nll, kl, nll, samples, int(active))


def with_likelihood(record: Any, scores: Likelihood) -> Any:
    """``record`` (a run's summary, an eval report) with the scores in its likelihood fields."""
    record.elbo, record.elbo_reconstruction, record.kl = scores.elbo, scores.reconstruction_nll, scores.kl
    record.nll, record.nll_samples, record.active_units = scores.nll, scores.samples, scores.active_units
    return record
