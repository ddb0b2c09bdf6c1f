"""Sparse autoencoders at the field's standard: stacked options, the dead-unit recipe (pre-encoder bias,
transposed decoder init, AuxK, unit-norm decoder, k annealing) and their numbers."""

from __future__ import annotations

import pytest
import torch

from autoenc_cli.build import build_model, build_objective, build_parts
from autoenc_cli.errors import UserError
from autoenc_cli.schema.resolve import resolve, typed_config
from autoenc_cli.sparsity.base import SparsityStack
from autoenc_cli.sparsity.hard import Lifetime, TopK, TopKConfig
from autoenc_cli.sparsity.penalties import L1Penalty
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config

SPARSE = ["model=sparse_fc", "model.code_dim=16"]


def test_stacked_options_apply_in_the_order_listed_and_penalties_add_up():
    config = resolve(
        compose_config([*SPARSE, "sparsity=[topk,lifetime]", "sparsity.topk.k=4", "sparsity.lifetime.k=3"])
    )
    assert list(config.sparsity) == ["topk", "lifetime"] and config.sparsity["topk"].k == 4
    stack = build_model(config, (1, 28, 28)).code_transform
    assert isinstance(stack, SparsityStack) and [type(m) for m in stack.members.values()] == [TopK, Lifetime]
    code = torch.rand(10, 16)
    kept = stack.train()(code)
    assert ((kept != 0).sum(dim=1) <= 4).all() and ((kept != 0).sum(dim=0) <= 3).all()
    # Each sample's top 4 first, then each unit's top 3 of what is left: the composition, exactly.
    expected = stack.members["lifetime"](stack.members["topk"](code))
    torch.testing.assert_close(kept, expected)
    assert torch.equal(stack.eval()(code) != 0, stack.members["topk"].eval()(code) != 0)  # lifetime: identity in eval

    config = resolve(compose_config([*SPARSE, "sparsity=[topk,l1]", "k=5", "lam=0.5"]))
    assert (config.sparsity["topk"].k, config.sparsity["l1"].lam) == (5, 0.5)  # unambiguous shorthands apply
    model = build_model(config, (1, 28, 28))
    model.eval()
    images = torch.rand(6, 1, 28, 28)
    output = model(images)
    terms = build_objective(config, model)(output, images)
    assert ((output.code != 0).sum(dim=1) == 5).all()
    torch.testing.assert_close(terms.penalty, 0.5 * output.code.abs().sum(dim=1).mean())
    assert isinstance(model.code_transform.members["l1"], L1Penalty)


def test_ambiguous_or_missing_shorthands_are_refused_never_guessed():
    with pytest.raises(
        UserError, match=r"k=16 is ambiguous: sparsity=\[topk,lifetime\] has 'k' in topk and lifetime; "
    ):
        resolve(compose_config([*SPARSE, "sparsity=[topk,lifetime]", "k=16"]))
    with pytest.raises(UserError, match=r"lam=0.1 is not allowed: sparsity=\[topk,lifetime\] has no 'lam'"):
        resolve(compose_config([*SPARSE, "sparsity=[topk,lifetime]", "lam=0.1"]))


def test_a_config_saved_before_stacking_still_loads():
    saved = {**compose_config(), "sparsity": {"name": "topk", "k": 5}}
    config = typed_config(saved)
    assert list(config.sparsity) == ["topk"] and config.sparsity["topk"].k == 5


def test_pre_bias_and_transposed_init_start_from_the_data():
    parts = build_parts(resolve(compose_config([*TINY, *SPARSE, "sparsity=topk", "k=4"])))
    model, train = parts.model, parts.data.train.images
    mean = train.double().mean(dim=0).float()
    torch.testing.assert_close(model.input_bias, mean)
    encoder, decoder = model.encoder[1][0], model.decoder[0][0]
    torch.testing.assert_close(decoder.weight, encoder.weight.t())
    # The zero code decodes to the mean (clamped where the sigmoid cannot reach 0 or 1).
    torch.testing.assert_close(model.decode(torch.zeros(1, 16))[0], mean.clamp(1e-3, 1 - 1e-3), atol=1e-5, rtol=1e-4)
    plain = build_parts(resolve(compose_config([*TINY, "model.code_dim=16"]))).model  # fc: the mean, a random decoder
    torch.testing.assert_close(plain.input_bias, mean)
    assert not torch.equal(plain.decoder[0][0].weight, plain.encoder[1][0].weight.t())
    tutorial = build_parts(resolve(compose_config([*TINY, "experiment=tutorial_fc", "model.code_dim=16"]))).model
    assert tutorial.input_bias is None  # the tutorial's network, as it wrote it


def test_unit_norm_decoder_holds_after_every_step():
    overrides = [*TINY, *SPARSE, "sparsity=topk", "k=4", "model.unit_norm_decoder=true", "trainer.epochs=1"]
    parts = build_parts(resolve(compose_config(overrides)))
    norms = lambda: parts.model.decoder[0][0].weight.norm(dim=0)  # noqa: E731
    torch.testing.assert_close(norms(), torch.ones(16))
    Trainer(parts).fit()
    torch.testing.assert_close(norms(), torch.ones(16))


def test_auxk_counts_silence_and_trains_only_dead_units():
    config = resolve(compose_config([*SPARSE, "sparsity=topk", "k=2", "sparsity.topk.dead_after=10"]))
    model = build_model(config, (1, 28, 28)).train()
    topk = model.code_transform.members["topk"]
    images = torch.rand(8, 1, 28, 28)
    output = model(images)
    silent = (output.code == 0).all(dim=0)
    assert torch.equal(topk.auxk.samples_since_fired, torch.where(silent, 8, 0))
    assert not topk.auxk.check_dead_units()
    assert build_objective(config, model)(output, images).penalty is None  # nobody dead yet: no aux loss

    topk.auxk.samples_since_fired.fill_(0)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:5] = True
    topk.auxk.samples_since_fired[dead] = 10
    assert topk.auxk.check_dead_units()  # training checks every CHECK_EVERY steps
    output = model(images)
    dead = topk.auxk.samples_since_fired >= 10  # those that fired in this batch are alive again
    assert 0 < dead.sum() < 5
    penalty = build_objective(config, model)(output, images).penalty
    assert penalty.item() > 0
    model.zero_grad()
    penalty.backward()
    encoder_grad = model.encoder[1][0].weight.grad.abs().sum(dim=1)
    decoder_grad = model.decoder[0][0].weight.grad.abs().sum(dim=0)
    firing_in_aux = dead & (output.raw_code > 0).any(dim=0)
    assert firing_in_aux.any()
    assert (encoder_grad[firing_in_aux] > 0).all() and (encoder_grad[~dead] == 0).all()  # only dead units learn
    assert (decoder_grad[~dead] == 0).all()


def test_k_annealing_starts_dense_and_reaches_k():
    layer = TopK(TopKConfig(k=4, k_anneal_steps=10), 20).train()
    seen = []
    for _ in range(12):
        seen.append(int((layer(torch.rand(3, 20)) != 0).sum(dim=1)[0]))
    assert seen[0] == 20 and seen[5] == 12 and seen[10:] == [4, 4]
    assert seen == sorted(seen, reverse=True)
    assert int((layer.eval()(torch.rand(3, 20)) != 0).sum(dim=1)[0]) == 4  # evaluation always keeps k
    restored = TopK(TopKConfig(k=4, k_anneal_steps=10), 20).train()
    saved = TopK(TopKConfig(k=4, k_anneal_steps=10), 20).state_dict()
    restored.load_state_dict(saved | {"auxk.steps": torch.tensor(5)})
    assert int((restored(torch.rand(3, 20)) != 0).sum(dim=1)[0]) == 12  # resumes where it was


def test_the_recipe_is_what_keeps_units_alive():
    """Same short run with and without the recipe: sparse_fc's defaults leave no unit dead."""
    short = ["trainer.epochs=3", "trainer.figures=false", "trainer.pca_baseline=false", "model=sparse_fc"]
    without = ["model.pre_bias=false", "model.decoder_init=random", "sparsity.topk.aux_coef=0"]
    dead = {}
    for name, extra in (("recipe", []), ("without", without)):
        result = Trainer(build_parts(resolve(compose_config([*short, "sparsity=topk", "k=5", *extra])))).fit()
        dead[name] = result.history[-1].dead_fraction
    assert dead["recipe"] <= 0.1 and dead["without"] >= 0.4, dead
