"""Variational autoencoders (model=vae): the Gaussian code, the ELBO objective, the importance-sampled NLL,
and a run end to end (metrics, figures, sweep comparison, load_run().sample, eval)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from autoenc_cli.build import build_model, build_objective
from autoenc_cli.errors import UserError
from autoenc_cli.evaluation.loading import load_run
from autoenc_cli.schema.resolve import typed_config
from autoenc_cli.training.likelihood import log_weights

from conftest import TINY, compose_config, run_main, train_in

VAE = ["model=vae", "model.code_dim=2", "model.encoder=[{width:32,activation:relu}]"]


def tiny_vae(*overrides: str, loss: str = "bce"):
    config = typed_config(compose_config([*VAE, f"loss={loss}", *overrides]))
    model = build_model(config, (1, 28, 28))
    return config, model, build_objective(config, model)


def test_the_objective_is_the_negative_elbo_with_beta_on_the_exact_kl():
    config, model, objective = tiny_vae("model.beta=3")
    x = (torch.rand(5, 1, 28, 28) > 0.5).float()
    model.eval()  # the code is the posterior mean: reconstruction and KL are exact, not sampled
    output = model(x)
    mean, log_variance = model.posterior(x)
    posterior, prior = Normal(mean, (0.5 * log_variance).exp()), Normal(torch.zeros(2), torch.ones(2))
    kl = kl_divergence(posterior, prior).sum(dim=1)
    nll = -Bernoulli(logits=output.logits).log_prob(x).flatten(1).sum(dim=1)
    terms = objective(output, x)
    assert torch.allclose(terms.reconstruction, nll.mean(), rtol=1e-5)
    assert torch.allclose(terms.penalty, 3 * kl.mean(), rtol=1e-5)
    assert torch.equal(output.code, mean)


def test_training_codes_are_reparameterised_samples_with_gradients_to_the_encoder():
    _, model, objective = tiny_vae()
    x = torch.rand(64, 1, 28, 28)
    torch.manual_seed(0)
    codes = model(x).code
    mean, log_variance = model.posterior(x)
    noise = (codes - mean) / (0.5 * log_variance).exp()
    assert abs(noise.mean().item()) < 0.2 and abs(noise.std().item() - 1) < 0.15  # eps ~ N(0, 1)
    objective(model(x), x).total.backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.parameters())


def test_kl_warmup_ramps_the_weight_from_zero_and_counts_only_training_steps():
    _, model, objective = tiny_vae("model.kl_warmup_steps=4", "model.beta=2")
    x = torch.rand(8, 1, 28, 28)
    weights = []
    for _ in range(6):
        weights.append(model.code_transform.kl_weight().item())
        objective(model(x), x)
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    model.eval()
    with torch.no_grad():
        objective(model(x), x)
    assert model.code_transform.steps.item() == 6  # evaluation does not advance the warm-up
    assert "code_transform.steps" in model.state_dict()  # so a resumed run continues the ramp


def test_importance_weights_are_the_joint_over_the_posterior():
    _, model, objective = tiny_vae()
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    generator = torch.Generator().manual_seed(0)
    weights, log_likelihoods, (mean, log_variance) = log_weights(model, objective.reconstruction, x, 4, generator)
    z = mean + torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0)) * (0.5 * log_variance).exp()
    logits = model.decode_logits(z.flatten(0, 1)).view(4, 3, -1)
    expected_likelihood = Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(dim=-1)
    posterior = Normal(mean, (0.5 * log_variance).exp()).log_prob(z).sum(dim=-1)
    prior = Normal(0.0, 1.0).log_prob(z).sum(dim=-1)
    assert weights.shape == (4, 3)
    assert torch.allclose(log_likelihoods, expected_likelihood, rtol=1e-5)
    assert torch.allclose(weights, expected_likelihood + prior - posterior, rtol=1e-5)


def test_the_gaussian_likelihood_is_normal_with_sigma():
    config, model, objective = tiny_vae("loss.sigma=0.25", loss="mse")
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    output = model(x)
    expected = -Normal(output.reconstruction, 0.25).log_prob(x).flatten(1).sum(dim=1)
    assert torch.allclose(objective.reconstruction.negative_log_likelihood(output, x), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory) -> Path:
    """Two tiny VAEs with a 2-D code on binarised digits, beta 0.5 and 4, as a sweep: each run's folder and the
    sweep's report."""
    root = tmp_path_factory.mktemp("vae")
    argv = [
        "train",
        "-m",
        *VAE,
        "loss=bce",
        "model.beta=0.5,4",
        *TINY,
        "trainer.nll_samples=20",
        "data.binarize=dynamic",
    ]
    argv.append("trainer.pca_baseline=false")
    train_in(root, argv)
    (sweep,) = (root / "outputs" / "sweeps").iterdir()
    return sweep


def test_a_vae_run_reports_its_elbo_nll_and_active_units_and_draws_what_it_generates(beta_sweep):
    metrics = [json.loads((beta_sweep / job / "metrics.json").read_text()) for job in ("0", "1")]
    for run in metrics:
        assert run["status"] == "completed" and run["nll_samples"] == 20
        assert math.isclose(run["elbo"], -(run["elbo_reconstruction"] + run["kl"]), rel_tol=1e-9)
        assert run["nll"] <= -run["elbo"] + 0.5  # the 20-sample bound is at least as tight as the ELBO
        assert 0 <= run["active_units"] <= 2 and run["code_dim"] == 2
        assert {"samples.png", "interpolations.png", "latent_manifold.png"} <= set(run["figures"])
    assert metrics[1]["kl"] < metrics[0]["kl"] / 2  # a larger beta buys a smaller rate
    history = (beta_sweep / "0" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header and 2 epochs
    summary = (beta_sweep / "summary.csv").read_text()
    assert "elbo" in summary.splitlines()[0] and (beta_sweep / "figures" / "rate_distortion.png").stat().st_size > 0
    assert not (beta_sweep / "figures" / "frontier.png").exists()  # a dense Gaussian code has no l0 frontier


def test_load_run_samples_from_the_prior_and_eval_scores_the_nll(beta_sweep, tmp_path, monkeypatch, capsys):
    run = load_run(beta_sweep / "0")
    assert set(run.load_data().val.images.unique().tolist()) == {0.0, 1.0}  # scored on binary digits
    first, again = run.sample(6, seed=1), run.sample(6, seed=1)
    assert first.shape == (6, 1, 28, 28) and torch.equal(first, again)
    assert 0 <= first.min() and first.max() <= 1 and not torch.equal(first, run.sample(6, seed=2))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval.json"
    assert (
        run_main(["eval", f"run={beta_sweep / '0'}", "nll_samples=50", f"out={out}", "probe.labels_per_class=[]"]) == 0
    )
    report = json.loads(out.read_text())
    assert report["nll_samples"] == 50 and report["nll"] <= -report["elbo"] + 0.5 and report["kl"] > 0


def test_sampling_needs_a_variational_model(beta_sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY, "trainer.figures=false", "trainer.pca_baseline=false"]) == 0
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    with pytest.raises(UserError, match="sample\\(\\) draws from a variational model's prior; this run's model is"):
        load_run(run_dir).sample(2)


def test_dynamic_binarisation_draws_training_batches_anew_and_validation_once():
    from autoenc_cli.registry import REGISTRY

    config = typed_config(compose_config(["data.binarize=dynamic"]))
    data, again = REGISTRY.build(config.data), REGISTRY.build(config.data)
    assert set(data.val.images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(data.val.images, again.val.images)  # the same binary digits in every run
    assert len(data.train.images.unique()) > 2  # intensities, drawn per batch:
    batch, generator = data.train.images[:64], torch.Generator().manual_seed(0)
    first, second = data.draw_batch(batch, generator), data.draw_batch(batch, generator)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert abs(first.mean().item() - batch.mean().item()) < 0.01  # a Bernoulli draw of each intensity
    plain = REGISTRY.build(typed_config(compose_config([])).data)
    assert torch.equal(plain.draw_batch(batch, generator), batch)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 25, 25)])
def test_the_conv_vae_decodes_back_to_the_input_shape_from_its_gaussian_code(shape):
    from autoenc_cli.models.vae import ConvVAEConfig
    from autoenc_cli.registry import REGISTRY

    model = REGISTRY.build(ConvVAEConfig(code_dim=3), shape)
    output = model(torch.rand(2, *shape))
    assert output.reconstruction.shape == (2, *shape) and output.raw_code.shape == (2, 6)
    assert output.code.shape == (2, 3) and model.sample(4).shape == (4, *shape)
