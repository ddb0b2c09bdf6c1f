"""Convolutional autoencoders: geometry, inferred code size, mirrored decoders, sparsity on the code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoenc_cli.build import build_model, build_parts
from autoenc_cli.errors import UserError
from autoenc_cli.models.conv import ConvBlockSpec, ConvDeconvAutoencoder, ConvDeconvModelConfig, ConvModelConfig
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config


def test_default_conv_is_four_6x6_convs_and_a_2x2_pool_giving_128_units():
    model = build_model(resolve(compose_config(["model=conv"])), (1, 28, 28))
    convs = [layer for layer in model.encoder.modules() if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 8, (6, 6))] + [(8, 8, (6, 6))] * 3
    assert any(isinstance(layer, nn.MaxPool2d) for layer in model.encoder.modules())
    assert model.code_dim == 8 * 4 * 4
    output = model(torch.rand(3, 1, 28, 28))
    assert output.code.shape == (3, 128) and output.reconstruction.shape == (3, 1, 28, 28)


@pytest.mark.parametrize(
    ("blocks", "pool", "shape"),
    [
        ([ConvBlockSpec(channels=4, num_layers=2, kernel=3, stride=2, padding=1)], 1, (3, 32, 32)),
        ([ConvBlockSpec(channels=5, kernel=5, stride=2), ConvBlockSpec(channels=6, kernel=3)], 2, (1, 29, 27)),
    ],
)
def test_conv_deconv_mirrors_back_to_the_exact_input_shape(blocks, pool, shape):
    model = ConvDeconvAutoencoder(ConvDeconvModelConfig(encoder=blocks, pool=pool), shape)
    deconvs = [layer for layer in model.decoder.modules() if isinstance(layer, nn.ConvTranspose2d)]
    assert len(deconvs) == sum(block.num_layers for block in blocks) and deconvs[-1].out_channels == shape[0]
    x = torch.rand(2, *shape)
    assert model(x).reconstruction.shape == x.shape
    assert model.dictionary().shape == (model.code_dim, *shape)


def test_geometry_that_collapses_names_the_layer_and_sizes():
    with pytest.raises(
        UserError, match=r"model.encoder\[0\]: conv layer 6 \(kernel 6, stride 1, padding 0\) maps 3x3 to -2x-2"
    ):
        resolve(compose_config(["model=conv", "model.encoder=[{channels: 8, num_layers: 6, kernel: 6}]"]))
    with pytest.raises(UserError, match="model.pool=8 .* only 3x3"):
        resolve(compose_config(["model=conv", "model.encoder=[{channels: 2, kernel: 26}]", "model.pool=8"]))
    with pytest.raises(UserError, match=r"name='conv' .* C x H x W; the data gives \(784,\)"):
        ConvModelConfig().describe((784,))


def test_sparsity_attaches_to_the_conv_code():
    result = Trainer(build_parts(resolve(compose_config([*TINY, "model=conv", "sparsity=topk", "k=10"])))).fit()
    assert result.history[-1].l0 == 10
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_conv_models_train_on_colour_inputs_from_the_data_shape():
    from autoenc_cli.data.tensors import DataBundle, Split

    generator = torch.Generator().manual_seed(0)
    bundle = DataBundle(
        Split(torch.rand(64, 3, 32, 32, generator=generator)), Split(torch.rand(16, 3, 32, 32, generator=generator))
    )
    for model_name in ("conv", "conv_deconv", "fc"):
        parts = build_parts(resolve(compose_config([*TINY, f"model={model_name}"])), data=bundle)
        assert parts.model(bundle.val.images).reconstruction.shape == (16, 3, 32, 32)
        result = Trainer(parts).fit()
        assert result.history[-1].train_loss < result.history[0].train_loss
