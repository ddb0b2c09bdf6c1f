"""The metrics sparse-autoencoder papers report: FVU / explained variance, cosine similarity, thresholded
l0 and dead units; PCA's error for every number of components; and their way into the run's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import r2_score
from torch import nn

from autoenc_cli.artifacts import figures
from autoenc_cli.baselines.pca import PCA, pca_baseline
from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.losses import LossTerms
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.training.metrics import active_threshold, evaluate

from conftest import TINY, only_run_dir, read_metrics, run_main


def mse_objective(output, target):
    """Stands in for the run's objective: evaluate only reads its terms."""
    error = (output.reconstruction - target).pow(2).mean()
    return LossTerms(error, error, None)


def linear_autoencoder(encoder: nn.Module, decoder: nn.Module, input_shape, code_dim) -> Autoencoder:
    return Autoencoder(encoder, decoder, input_shape, code_dim, "linear", nn.Identity()).eval()


def pca_autoencoder(data: torch.Tensor, code_dim: int) -> Autoencoder:
    """A linear autoencoder onto the data's top principal axes: a reconstruction of known quality."""
    pca = PCA(code_dim).fit(data)
    axes, mean = pca.components.float(), pca.mean.float()
    encoder, decoder = nn.Linear(data.shape[1], code_dim), nn.Linear(code_dim, data.shape[1])
    with torch.no_grad():
        encoder.weight.copy_(axes)
        encoder.bias.copy_(-axes @ mean)
        decoder.weight.copy_(axes.T)
        decoder.bias.copy_(mean)
    return linear_autoencoder(encoder, decoder, (data.shape[1],), code_dim)


def standardised_vectors_far_from_zero(samples=300, features=12) -> torch.Tensor:
    """Features of different scales around a mean of about 500: a naive E[x^2] - E[x]^2 in float32 fails."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 3.0, features)
    mean = 500 + 10 * torch.randn(features, generator=generator)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    return mean + (torch.randn(samples, features, generator=generator) @ mixing + 0.3) * scale


@pytest.mark.parametrize("shift_inputs", [0.0, 0.7], ids=["clean", "denoising"])
def test_explained_variance_is_sklearns_variance_weighted_r2(shift_inputs):
    data = standardised_vectors_far_from_zero()
    model = pca_autoencoder(data, code_dim=4)
    noise = (lambda clean, generator: clean + shift_inputs) if shift_inputs else None  # noqa: E731
    split, batch_size = Split(data), 64  # five batches, the last one short
    scores, _ = evaluate(model, mse_objective, split, batch_size, noise)
    # The reference sees the same reconstructions, scored against the clean data.
    with torch.inference_mode():
        reconstruction = torch.cat([model(batch + shift_inputs).reconstruction for batch in iterate_batches(split, 64)])
    r2 = r2_score(data.double().numpy(), reconstruction.double().numpy(), multioutput="variance_weighted")
    assert 0.05 < r2 < 0.95  # a partial reconstruction, so the check is not trivially 0 or 1
    assert scores.explained_variance == pytest.approx(r2, abs=1e-6)
    assert scores.fvu == pytest.approx(1 - r2, abs=1e-6)
    assert scores.explained_variance == 1 - scores.fvu


def test_fvu_is_undefined_for_a_constant_split():
    data = torch.full((10, 3), 2.0)
    scores, _ = evaluate(linear_autoencoder(nn.Identity(), nn.Identity(), (3,), 3), mse_objective, Split(data), 4)
    assert scores.fvu is None and scores.explained_variance is None and scores.mse == 0


def test_cosine_similarity_is_torchs_mean_over_samples_with_zero_images_guarded():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(50, 1, 4, 4, generator=generator)
    images[7] = 0  # a blank image: a zero input and a zero reconstruction (no biases)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 5, bias=False))
    model = linear_autoencoder(encoder, nn.Linear(5, 16, bias=False), (1, 4, 4), 5)
    scores, _ = evaluate(model, mse_objective, Split(images), 16)
    with torch.inference_mode():
        reconstruction = model(images).reconstruction
    per_sample = F.cosine_similarity(reconstruction.flatten(1), images.flatten(1), dim=1)
    assert per_sample[7] == 0 and torch.isfinite(per_sample).all()
    assert scores.cosine_similarity == pytest.approx(per_sample.double().mean().item(), abs=1e-6)


# A code the model passes through unchanged: 4 samples x 6 units.
HAND_MADE_CODES = torch.tensor(
    [
        [0.0, 0.05, 0.5, -0.3, 0.0, 0.25],
        [0.0, -0.2, 0.9, 0.0, 0.0, 0.25],
        [0.0, 0.01, 0.7, 0.05, 0.0, 0.25],
        [0.0, 0.0, 0.6, -0.15, 0.0, 0.25],
    ]
)


@pytest.mark.parametrize(
    ("threshold", "frequency", "l0", "dense"),
    [
        (0.0, [0, 0.75, 1, 0.75, 0, 1], 3.5, 4 / 6),  # exactly non-zero
        (0.1, [0, 0.25, 1, 0.5, 0, 1], 2.75, 2 / 6),  # |code| > 0.1: 0.05, 0.01 and -0.05 do not count
    ],
)
def test_thresholded_l0_dead_and_dense_units_on_a_hand_made_code(threshold, frequency, l0, dense):
    model = linear_autoencoder(nn.Identity(), nn.Identity(), (6,), 6)
    scores, codes = evaluate(model, mse_objective, Split(HAND_MADE_CODES), 3, threshold=threshold)
    assert codes.firing_frequency.tolist() == frequency and codes.threshold == threshold
    assert scores.l0 == codes.l0 == l0 and scores.l0_threshold == threshold
    assert scores.dead_fraction == pytest.approx(2 / 6) and scores.dense_fraction == pytest.approx(dense)


def test_the_automatic_threshold_counts_bounded_never_zero_codes_from_a_tenth():
    assert [active_threshold(None, name) for name in ("sigmoid", "tanh", "relu", "leaky_relu", "linear")] == [
        0.1,
        0.1,
        0.0,
        0.0,
        0.0,
    ]
    assert active_threshold(0.3, "sigmoid") == 0.3 and active_threshold(0.0, "tanh") == 0.0


@pytest.mark.parametrize("denoising", [False, True])
def test_pca_error_for_every_k_from_one_svd_matches_refitting_with_k_components(denoising):
    generator = torch.Generator().manual_seed(2)
    train, val = torch.rand(60, 10, generator=generator), torch.rand(25, 10, generator=generator)
    inputs = val + 0.2 * torch.randn(val.shape, generator=generator) if denoising else val
    baseline = pca_baseline(train, inputs, 6, val)
    expected = [PCA(k).fit(train).reconstruction_mse(inputs, val) for k in range(1, 7)]
    assert baseline.mse_by_k == pytest.approx(expected, rel=1e-5)
    assert baseline.mse == pytest.approx(expected[-1], rel=1e-9)
    assert len(pca_baseline(train, inputs, 40, val).mse_by_k) == 10  # no more components than features


def test_the_dictionary_figure_sorts_by_firing_frequency_and_marks_dead_units(tmp_path):
    atoms = torch.randn(12, 1, 5, 5, generator=torch.Generator().manual_seed(3))
    frequency = torch.tensor([0.1, 0, 0.5, 0.02, 0, 1, 0.3, 0, 0.05, 0.2, 0.01, 0.7])
    for max_units in (256, 8):  # all units, or the most frequent 8 (two of the three dead ones left out)
        path = figures.dictionary(tmp_path / f"dictionary{max_units}.png", atoms, frequency, 0.1, max_units)
        assert path.stat().st_size > 0


def test_train_and_eval_report_the_metrics_with_the_configured_threshold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A threshold no code reaches: every unit is dead, from training's validation through eval.
    assert run_main(["train", *TINY, "trainer.epochs=1", "trainer.figures=false", "trainer.active_threshold=1e9"]) == 0
    run = only_run_dir(tmp_path)
    metrics = read_metrics(run)
    assert metrics["l0_threshold"] == 1e9 and metrics["l0"] == 0 and metrics["dead_fraction"] == 1
    # One epoch on 320 digits reconstructs worse than the mean digit: FVU above 1 is the honest number.
    assert metrics["val_fvu"] > 0 and metrics["val_explained_variance"] == pytest.approx(1 - metrics["val_fvu"])
    assert 0 < metrics["val_cosine_similarity"] <= 1
    curve = metrics["pca_val_mse_by_k"]
    assert len(curve) == metrics["code_dim"] == 64 and curve[-1] == pytest.approx(metrics["pca_val_mse"], rel=1e-5)
    assert all(later <= earlier for earlier, later in zip(curve, curve[1:]))  # more components, less error
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_fvu", "val_explained_variance", "val_cosine_similarity"} <= set(history)
    assert run_main(["eval", f"run={run}", "probe.labels_per_class=all", "probe.steps=5"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["l0_threshold"] == 1e9 and report["l0"] == 0 and report["dead_fraction"] == 1
    assert report["fvu"] == pytest.approx(metrics["val_fvu"], rel=1e-6)  # one epoch: best is last
    assert np.isclose(report["cosine_similarity"], metrics["val_cosine_similarity"])
