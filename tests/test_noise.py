"""Noise for denoising autoencoders: batched, seeded, input-only corruption."""

from __future__ import annotations

import math

import pytest
import torch

from autoenc_cli.build import build_parts
from autoenc_cli.noise.corruptions import (
    GaussianConfig,
    GaussianNoise,
    MaskConfig,
    MaskingNoise,
    SaltPepperConfig,
    SaltPepperNoise,
    choose_pixels,
)
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masking_picks_exactly_round_rate_times_pixels_per_image():
    clean = torch.rand(50, 3, 7, 9) + 1.0  # no pixel is 0 before masking
    noisy = MaskingNoise(MaskConfig(rate=0.3, value=0.0))(clean, seeded())
    masked_pixels = (noisy == 0).all(dim=1).flatten(1).sum(dim=1)  # all channels of a pixel
    assert (masked_pixels == round(0.3 * 63)).all()
    assert ((noisy == 0).any(dim=1) == (noisy == 0).all(dim=1)).all()
    assert not torch.equal(masked_pixels.new_tensor(0), masked_pixels.sum())
    assert choose_pixels(clean, 0.0, seeded()).sum() == 0 and choose_pixels(clean, 1.0, seeded()).all()


def test_noise_is_reproducible_per_generator_and_fresh_per_draw():
    clean = torch.rand(8, 1, 10, 10)
    for noise in (GaussianNoise(GaussianConfig()), MaskingNoise(MaskConfig()), SaltPepperNoise(SaltPepperConfig())):
        assert torch.equal(noise(clean, seeded(1)), noise(clean, seeded(1)))
        generator = seeded(1)
        assert not torch.equal(noise(clean, generator), noise(clean, generator))


def test_gaussian_noise_has_the_configured_mean_and_variance():
    clean = torch.zeros(200, 1, 50, 50)
    noisy = GaussianNoise(GaussianConfig(mean=0.2, variance=0.5))(clean, seeded())
    assert noisy.mean().item() == pytest.approx(0.2, abs=0.01)
    assert noisy.var().item() == pytest.approx(0.5, rel=0.02)
    clipped = GaussianNoise(GaussianConfig(variance=0.5, clip=True))(clean, seeded())
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_salt_and_pepper_sets_exactly_rate_pixels_to_zero_or_one():
    clean = torch.full((100, 1, 10, 10), 0.5)
    noisy = SaltPepperNoise(SaltPepperConfig(rate=0.2))(clean, seeded())
    changed = noisy != 0.5
    assert (changed.flatten(1).sum(dim=1) == 20).all()
    assert set(noisy[changed].unique().tolist()) == {0.0, 1.0}
    assert 0.4 < (noisy[changed] == 1).float().mean() < 0.6


def test_denoising_run_targets_the_clean_input_and_reports_psnr():
    parts = build_parts(resolve(compose_config([*TINY, "noise=gaussian", "noise.variance=0.5", "trainer.epochs=3"])))
    trainer = Trainer(parts)
    result = trainer.fit()
    row = result.history[-1]
    assert row.val_psnr_denoised > row.val_psnr_noisy > 0
    assert row.val_psnr_denoised == pytest.approx(10 * math.log10(1 / row.val_mse))  # scored against clean
    # Validation corruption is fixed: two validation passes give the same numbers.
    assert trainer.validate()[0] == trainer.validate()[0]
