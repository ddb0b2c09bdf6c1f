"""Fully-connected models built from layer descriptors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoenc_cli.build import build_model
from autoenc_cli.errors import ConfigError
from autoenc_cli.models.fc import FCAutoencoder, FCModelConfig
from autoenc_cli.models.layers import LayerSpec
from autoenc_cli.schema.resolve import resolve

from conftest import compose_config


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in module.modules() if isinstance(layer, nn.Linear)]


def test_default_model_is_784_64_784_with_a_linear_code():
    model = build_model(resolve(compose_config()), (1, 28, 28))
    assert linear_shapes(model.encoder) == [(784, 64)]
    assert linear_shapes(model.decoder) == [(64, 784)]
    assert [type(layer) for layer in model.encoder[1]] == [nn.Linear, nn.Identity]
    output = model(torch.rand(5, 1, 28, 28))
    assert output.code.shape == (5, 64)
    assert output.reconstruction.shape == output.logits.shape == (5, 1, 28, 28)
    assert 0 <= output.reconstruction.min() and output.reconstruction.max() <= 1


def test_layer_descriptors_expand_and_mirror():
    config = FCModelConfig(
        code_dim=30, encoder=[LayerSpec(width=100, num_layers=2, activation="relu"), LayerSpec(width=50)]
    )
    model = FCAutoencoder(config, (1, 10, 10))
    assert linear_shapes(model.encoder) == [(100, 100), (100, 100), (100, 50), (50, 30)]
    assert linear_shapes(model.decoder) == [(30, 50), (50, 100), (100, 100), (100, 100)]


def test_explicit_decoder_and_input_size_from_data():
    config = FCModelConfig(code_dim=8, decoder=[LayerSpec(width=20), LayerSpec(width=None, activation="sigmoid")])
    model = FCAutoencoder(config, (3, 4, 4))
    assert linear_shapes(model.decoder) == [(8, 20), (20, 48)]
    assert isinstance(model.output_activation, nn.Sigmoid)
    assert model(torch.rand(2, 3, 4, 4)).reconstruction.shape == (2, 3, 4, 4)


def test_decoder_that_does_not_end_at_the_input_is_an_error():
    config = FCModelConfig(code_dim=8, decoder=[LayerSpec(width=20), LayerSpec(width=700)])
    with pytest.raises(ConfigError, match=r"decoder\[1\].width=700 .* input size 784"):
        config.describe((1, 28, 28))
    with pytest.raises(ConfigError, match=r"^model.decoder\[1\].width=700 .* input size 784"):
        resolve(compose_config(["model.decoder=[{width: 20}, {width: 700}]"]))


def test_dictionary_of_a_single_layer_decoder_is_its_weight_columns():
    model = FCAutoencoder(FCModelConfig(code_dim=6), (1, 4, 4))
    linear = next(layer for layer in model.decoder.modules() if isinstance(layer, nn.Linear))
    atoms = model.dictionary()
    assert atoms.shape == (6, 1, 4, 4)
    torch.testing.assert_close(atoms.flatten(1), linear.weight.T)


def test_gradients_reach_every_parameter():
    model = FCAutoencoder(FCModelConfig(code_dim=4, encoder=[LayerSpec(width=8)]), (1, 3, 3))
    model(torch.rand(7, 1, 3, 3)).reconstruction.sum().backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.parameters())


def test_adamw_decays_weights_apart_from_the_gradient():
    from autoenc_cli.registry import REGISTRY

    config = resolve(compose_config(["optimizer=adamw"])).optimizer
    weight = nn.Parameter(torch.ones(3))
    optimizer = REGISTRY.build(config, [weight])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 1e-2
    weight.grad = torch.zeros(3)  # no gradient: only the decay moves the weight, by lr x weight_decay
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 1e-3 * 1e-2))


def test_kaiming_init_keeps_the_signal_scale_through_a_deep_stack():
    widths = ["model.encoder=[{width: 512}, {width: 512}, {width: 512}]", "model.code_dim=512"]
    x = torch.rand(256, 1, 28, 28)
    scales = {}
    for init in ("default", "kaiming"):
        torch.manual_seed(0)
        model = build_model(resolve(compose_config([*widths, f"model.init={init}"])), (1, 28, 28))
        scales[init] = model.raw_code(x).std().item() / x.std().item()
        biases = [layer.bias for layer in model.modules() if isinstance(layer, nn.Linear)]
        assert (init == "kaiming") == all(bool((bias == 0).all()) for bias in biases)
    # PyTorch's init shrinks the signal layer by layer (0.13 of the input's spread after four); He init keeps
    # its order of magnitude.
    assert scales["default"] < 0.3 and 0.5 < scales["kaiming"] < 5, scales


def test_fc_runs_saved_before_the_linear_code_and_the_pre_bias_load_as_the_model_they_trained():
    import hashlib
    import json

    from omegaconf import OmegaConf

    from autoenc_cli.schema.resolve import typed_config, with_former_values
    from autoenc_cli.training.checkpoint import model_fingerprint

    saved = OmegaConf.to_container(compose_config([]))
    for key in ("code_activation", "pre_bias"):  # keys such a run's config never wrote
        saved["model"].pop(key)
    run = typed_config(saved, saved=True)
    assert run.model.code_activation == "leaky_relu" and run.model.pre_bias is False
    assert build_model(run, (1, 28, 28)).input_bias is None
    old = {"model": {"name": "fc"}, "sparsity": {}, "input_shape": [1, 28, 28], "version": 2}
    assert model_fingerprint(run, (1, 28, 28)) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert typed_config(with_former_values(saved)).model == run.model  # what a resumed run continues with
    assert resolve(compose_config()).model.pre_bias is True  # a new run centres on the mean
