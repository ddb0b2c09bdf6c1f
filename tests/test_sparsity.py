"""Sparsity options: hard top-k layers, penalties, shorthands and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from autoenc_cli.build import build_parts
from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import AutoencoderOutput
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.sparsity.hard import (
    BatchTopK,
    BatchTopKConfig,
    Lifetime,
    LifetimeConfig,
    TopK,
    TopKConfig,
    keep_top_k,
)
from autoenc_cli.sparsity.penalties import KLConfig, KLPenalty, L1Config, L1Penalty
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config


def step_with(code: torch.Tensor) -> tuple[AutoencoderOutput, torch.Tensor, None]:
    """A penalty's arguments for a given code: (output, target, model); L1 and KL read only the code."""
    zeros = torch.zeros(code.shape[0], 1)
    return AutoencoderOutput(code, zeros, zeros, code), zeros, None


def distinct(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random doubles with no near-ties, so a small perturbation never changes which entries win."""
    count = math.prod(shape)
    values = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).double() / count - 0.5
    return values.view(*shape)


def reference_mask(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The dense reference: rank every entry along ``dim`` with a sort and keep ranks below k."""
    ranks = x.argsort(dim=dim, descending=True).argsort(dim=dim)
    return ranks < k


@pytest.mark.parametrize(("shape", "k", "dim"), [((6, 10), 3, 1), ((8, 5), 2, 0), ((1, 40), 12, 1)])
def test_keep_top_k_matches_dense_reference_forward_and_backward(shape, k, dim):
    x = distinct(*shape).requires_grad_(True)
    mask = reference_mask(x.detach(), k, dim)
    out = keep_top_k(x, k, dim)
    torch.testing.assert_close(out, x.detach() * mask)
    weights = torch.randn(shape, dtype=torch.double)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights * mask)  # gradient only through the kept entries
    assert torch.autograd.gradcheck(lambda value: keep_top_k(value, k, dim), (x.detach().clone().requires_grad_(True),))


def test_topk_keeps_exactly_k_per_sample_even_with_ties():
    layer = TopK(TopKConfig(k=4), 20)
    assert ((layer(torch.randn(32, 20)) != 0).sum(dim=1) == 4).all()
    tied = torch.ones(5, 9)
    layer = TopK(TopKConfig(k=4), 9)
    out = layer(tied)
    assert ((out != 0).sum(dim=1) == 4).all()
    torch.testing.assert_close(out, layer(tied.clone()))  # ties broken the same way every time


def test_lifetime_keeps_k_per_unit_in_training_and_is_identity_in_eval():
    code = torch.randn(40, 7)
    layer = Lifetime(LifetimeConfig(rate=0.25), 7)
    assert layer.kept_per_unit(40) == 10
    assert ((layer.train()(code) != 0).sum(dim=0) == 10).all()
    assert torch.equal(layer.eval()(code), code)
    assert Lifetime(LifetimeConfig(k=100), 7).kept_per_unit(40) == 40  # clamped, not an error
    assert ((Lifetime(LifetimeConfig(k=3), 7).train()(code) != 0).sum(dim=0) == 3).all()


def test_batch_topk_keeps_k_times_batch_and_evaluates_per_sample():
    layer = BatchTopK(BatchTopKConfig(k=3, threshold_momentum=0.5), 12).train()
    code = torch.rand(16, 12)
    out = layer(code)
    assert int((out != 0).sum()) == 3 * 16
    smallest_kept = out[out != 0].min()
    assert layer.threshold == smallest_kept  # first batch sets the threshold
    layer(torch.rand(16, 12) * 2)
    assert smallest_kept < layer.threshold  # EMA moves toward the new batch's threshold
    layer.eval()
    alone, in_batch = layer(code[:1]), layer(code)[:1]
    torch.testing.assert_close(alone, in_batch)  # evaluation does not depend on the batch
    assert torch.equal(alone != 0, code[:1] > layer.threshold)


def test_l1_and_kl_penalty_values():
    code = torch.tensor([[0.1, 0.2, 0.4], [0.3, 0.1, 0.2]])
    assert L1Penalty(L1Config(lam=0.5), 3).penalty(*step_with(-code)).item() == pytest.approx(0.5 * (0.7 + 0.6) / 2)
    rho = 0.05
    rho_hat = code.mean(dim=0)
    expected = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).mean()
    assert KLPenalty(KLConfig(lam=0.1, rho=rho), 3).penalty(*step_with(code)).item() == pytest.approx(
        0.1 * expected.item(), rel=1e-5
    )
    assert KLPenalty(KLConfig(lam=1.0, rho=0.2), 3).penalty(
        *step_with(torch.full((4, 3), 0.2))
    ).item() == pytest.approx(0.0, abs=1e-7)


def test_shorthands_set_the_sparsity_group():
    run = resolve(compose_config(["model=sparse_fc", "sparsity=topk", "k=5"]))
    assert run.sparsity["topk"].k == 5 and run.model.code_activation == "relu"
    assert resolve(compose_config(["sparsity=topk", "sparsity.topk.k=7"])).sparsity["topk"].k == 7
    assert resolve(compose_config(["sparsity=kl", "lam=0.01"])).sparsity["kl"].lam == 0.01
    assert resolve(compose_config(["sparsity=lifetime", "k=9"])).sparsity["lifetime"].k == 9


def test_kl_option_sets_a_sigmoid_code_and_rejects_other_ranges():
    run = resolve(compose_config(["sparsity=kl"]))
    assert run.model.code_activation == "sigmoid" and (run.sparsity["kl"].lam, run.sparsity["kl"].rho) == (0.1, 0.05)
    with pytest.raises(ConfigError, match="model.code_activation='relu' is not allowed: sparsity=kl needs codes in"):
        resolve(compose_config(["sparsity=kl", "model.code_activation=relu"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sparsity=topk", "k=0"], "k=0 is not allowed: must be >= 1"),
        (["sparsity=kl", "sparsity.kl.rho=1"], "sparsity.kl.rho=1.0 is not allowed: must be > 0 and < 1"),
        (["sparsity=kl", "sparsity.kl.rho=0"], "sparsity.kl.rho=0.0 is not allowed"),
        (["sparsity=l1", "lam=-0.1"], "lam=-0.1 is not allowed: must be >= 0"),
        (["k=5"], "k=5 is not allowed: sparsity=none has no 'k'"),
        (["sparsity=topk", "lam=0.1"], "lam=0.1 is not allowed: sparsity=topk has no 'lam'"),
    ],
)
def test_bad_sparsity_values(overrides, message):
    with pytest.raises(ConfigError) as caught:
        resolve(compose_config(overrides))
    assert message in str(caught.value)


def test_topk_k_larger_than_the_code_is_an_error():
    with pytest.raises(
        ConfigError, match=r"sparsity.topk.k=65 is not allowed: must be <= the code size model.code_dim=64"
    ):
        resolve(compose_config(["sparsity=topk", "k=65"]))


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["sparsity=topk", "k=5"], lambda row: row.l0 == 5),
        (["model=sparse_fc", "sparsity=l1", "lam=0.001"], lambda row: row.val_penalty > 0 and 0 < row.l0 < 64),
        (["sparsity=kl", "lam=0.1"], lambda row: row.val_penalty > 0),
        (["model=sparse_fc", "sparsity=batch_topk", "k=8"], lambda row: 0 < row.l0 < 64),
    ],
)
def test_sparse_runs_train_and_report_sparsity(overrides, check):
    result = Trainer(build_parts(resolve(compose_config([*TINY, *overrides])))).fit()
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert check(result.history[-1]), result.history[-1]
