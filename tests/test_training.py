"""The train/validate loop, learning-rate policies, checkpoints and baselines."""

from __future__ import annotations

import pytest
import torch

from autoenc_cli.baselines.pca import PCA, pca_baseline_mse
from autoenc_cli.build import build_parts
from autoenc_cli.errors import UserError
from autoenc_cli.schedules import LearningRatePolicy, StandardScheduleConfig
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.checkpoint import load_checkpoint, save_checkpoint
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config


def fit(overrides=()):
    parts = build_parts(resolve(compose_config([*TINY, *overrides])))
    return parts, Trainer(parts).fit()


def test_loss_decreases_and_history_has_one_row_per_epoch():
    _, result = fit(["trainer.epochs=4"])
    assert [row.epoch for row in result.history] == [1, 2, 3, 4]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].val_loss < result.history[0].val_loss
    assert result.samples_seen == 4 * 320 and result.samples_per_second > 0


def test_same_config_and_seed_give_identical_numbers():
    first, second, other = fit(), fit(), fit(["seed=1"])
    assert first[1].history[-1].val_loss == second[1].history[-1].val_loss
    for a, b in zip(first[0].model.parameters(), second[0].model.parameters()):
        assert torch.equal(a, b)
    assert other[1].history[-1].val_loss != first[1].history[-1].val_loss


def test_metrics_for_dense_codes():
    _, result = fit(["trainer.epochs=1"])
    row = result.history[-1]
    assert row.l0 == pytest.approx(64, abs=1) and row.dead_fraction == 0 and row.val_penalty == 0
    assert row.val_mse == pytest.approx(row.val_loss, rel=1e-5)  # loss is MSE


def test_bce_loss_trains_from_logits():
    _, result = fit(["loss=bce"])
    assert result.history[-1].val_loss < result.history[0].val_loss
    assert result.history[-1].val_loss > result.history[-1].val_mse


def _policy(policy, **settings):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    return LearningRatePolicy(optimizer, StandardScheduleConfig(policy=policy, **settings), epochs=10)


def test_plateau_reduces_by_factor_after_patience_and_stops_below_stop_lr():
    policy = _policy("plateau", factor=0.1, patience=2, stop_lr=1e-5)
    rates = []
    for _ in range(12):
        policy.step(1.0)  # never improves
        rates.append(policy.lr)
        if policy.should_stop():
            break
    assert rates[:3] == [1e-3, 1e-3, 1e-3] and rates[3] == pytest.approx(1e-4)
    assert policy.should_stop() and policy.lr == pytest.approx(1e-6) and len(rates) == 10


def test_cosine_and_constant_policies():
    cosine, constant = _policy("cosine"), _policy("constant")
    for _ in range(5):
        cosine.optimizer.step()
        cosine.step(1.0)
        constant.step(1.0)
    assert cosine.lr == pytest.approx(0.5e-3) and constant.lr == 1e-3
    assert not cosine.should_stop() and not constant.should_stop()


def test_checkpoints_round_trip_and_reject_foreign_files(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2 and list(path.parent.iterdir()) == [path]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    foreign = tmp_path / "foreign.pt"
    torch.save({"something": 1}, foreign)
    for bad in (truncated, foreign, tmp_path / "missing.pt"):
        with pytest.raises(UserError):
            load_checkpoint(bad)


def test_pca_matches_the_best_rank_k_reconstruction():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(200, 1, 4, 5, generator=generator)
    pca = PCA(3).fit(data)
    centred = data.flatten(1).double() - data.flatten(1).double().mean(0)
    singular = torch.linalg.svdvals(centred)
    expected = (singular[3:] ** 2).sum() / data.numel()
    assert pca.reconstruction_mse(data) == pytest.approx(expected.item(), rel=1e-6)
    assert pca_baseline_mse(data, data, 20) is None  # not a compression
