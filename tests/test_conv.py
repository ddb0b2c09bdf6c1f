"""Convolutional autoencoders: geometry, inferred or linear code size, mirrored decoders, batch norm,
sparsity on the code."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from autoenc_cli.build import build_model, build_parts
from autoenc_cli.errors import UserError
from autoenc_cli.models.conv import ConvAutoencoder, ConvBlockSpec, ConvDeconvModelConfig, ConvModelConfig
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config, run_main

# model=conv's layout (a stride-2 block with batch norm, a 128-unit code layer, the deconv decoder) with
# one narrow block, so a test that trains it stays fast.
SMALL_CONV = ["model=conv", "model.encoder=[{channels: 4, kernel: 3, stride: 2, padding: 1, norm: batch}]"]


def test_the_tutorial_conv_is_four_6x6_convs_and_a_2x2_pool_giving_128_units():
    model = build_model(resolve(compose_config(["experiment=tutorial_conv"])), (1, 28, 28))
    convs = [layer for layer in model.encoder.modules() if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 8, (6, 6))] + [(8, 8, (6, 6))] * 3
    assert any(isinstance(layer, nn.MaxPool2d) for layer in model.encoder.modules())
    assert model.code_dim == 8 * 4 * 4
    output = model(torch.rand(3, 1, 28, 28))
    assert output.code.shape == (3, 128) and output.reconstruction.shape == (3, 1, 28, 28)


def test_the_conv_presets_are_strided_with_batch_norm_and_a_128_unit_code():
    def layers(module, kind):
        return [layer for layer in module.modules() if isinstance(layer, kind)]

    conv = build_model(resolve(compose_config(["model=conv"])), (1, 28, 28))
    assert [(c.out_channels, c.stride) for c in layers(conv.encoder, nn.Conv2d)] == [(32, (2, 2)), (64, (2, 2))]
    assert [(fc.in_features, fc.out_features) for fc in layers(conv.encoder, nn.Linear)] == [(64 * 7 * 7, 128)]
    assert len(layers(conv.encoder, nn.BatchNorm2d)) == 2 and len(layers(conv.decoder, nn.ConvTranspose2d)) == 2
    fully_convolutional = build_model(resolve(compose_config(["model=conv_deconv"])), (1, 28, 28))
    assert [c.out_channels for c in layers(fully_convolutional.encoder, nn.Conv2d)] == [32, 64, 8]
    assert not layers(fully_convolutional, nn.Linear) and fully_convolutional.code_dim == 8 * 4 * 4
    for model in (conv, fully_convolutional):
        output = model(torch.rand(2, 1, 28, 28))
        assert output.code.shape == (2, 128) and output.reconstruction.shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("blocks", "pool", "shape"),
    [
        ([ConvBlockSpec(channels=4, num_layers=2, kernel=3, stride=2, padding=1)], 1, (3, 32, 32)),
        ([ConvBlockSpec(channels=5, kernel=5, stride=2), ConvBlockSpec(channels=6, kernel=3)], 2, (1, 29, 27)),
    ],
)
def test_conv_deconv_mirrors_back_to_the_exact_input_shape(blocks, pool, shape):
    model = ConvAutoencoder(ConvDeconvModelConfig(encoder=blocks, pool=pool), shape)
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
    result = Trainer(build_parts(resolve(compose_config([*TINY, *SMALL_CONV, "sparsity=topk", "k=10"])))).fit()
    assert result.history[-1].l0 == 10
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_conv_models_train_on_colour_inputs_from_the_data_shape():
    from autoenc_cli.data.tensors import DataBundle, Split

    generator = torch.Generator().manual_seed(0)
    bundle = DataBundle(
        Split(torch.rand(64, 3, 32, 32, generator=generator)), Split(torch.rand(16, 3, 32, 32, generator=generator))
    )
    for model_name in ("conv", "conv_deconv", "fc"):
        small = [SMALL_CONV[1]] if model_name != "fc" else []  # the presets' layout, one narrow block
        parts = build_parts(resolve(compose_config([*TINY, f"model={model_name}", *small])), data=bundle)
        assert parts.model(bundle.val.images).reconstruction.shape == (16, 3, 32, 32)
        result = Trainer(parts).fit()
        assert result.history[-1].train_loss < result.history[0].train_loss


@pytest.mark.parametrize("decoder_type", ["fc", "deconv"])
@pytest.mark.parametrize("shape", [(1, 25, 25), (3, 32, 32), (1, 8, 8)])
def test_a_code_layer_sets_the_code_size_and_the_output_keeps_odd_and_colour_shapes(shape, decoder_type):
    blocks = [
        ConvBlockSpec(channels=4, kernel=3, stride=2, padding=1, norm="batch"),
        ConvBlockSpec(channels=6, kernel=3, stride=2, padding=1),
    ]
    config = ConvModelConfig(encoder=blocks, pool=1, code_dim=12, code_activation="linear", decoder_type=decoder_type)
    model = ConvAutoencoder(config, shape)
    assert config.describe(shape).code_dim == model.code_dim == 12
    assert isinstance(model.encoder[-2], nn.Linear) and model.encoder[-2].out_features == 12
    norms = [[type(layer) for layer in part.modules()].count(nn.BatchNorm2d) for part in (model.encoder, model.decoder)]
    # The first block's norm, mirrored by the transposed conv that rebuilds its output; none in an fc decoder.
    assert norms == [1, 1 if decoder_type == "deconv" else 0]
    output = model(torch.rand(2, *shape))
    assert output.code.shape == (2, 12) and output.reconstruction.shape == (2, *shape)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.encoder.0.norm=layer"], "model.encoder[0].norm='layer' is not allowed: choose one of none, batch"),
        (["model.decoder_type=mlp"], "model.decoder_type='mlp' is not allowed: choose one of fc, deconv"),
        (["model.code_dim=0"], "model.code_dim=0 is not allowed: must be >= 1"),
        (
            ["model.decoder_type=deconv", "model.decoder=[{width: 64}, {}]"],
            "model.decoder=[{'width': 64, 'num_layers': 1, 'activation': 'leaky_relu'}, {'width': None, "
            "'num_layers': 1, 'activation': 'leaky_relu'}] is not allowed: fully-connected decoder layers need "
            "decoder_type=fc, not deconv; leave it null",
        ),
    ],
)
def test_bad_conv_options_are_one_line_errors_before_training(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY, "model=conv", *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoenc: error: ") and message in lines[0], lines
    assert not (tmp_path / "outputs").exists()


# A conv run's saved config (its checkpoint's) as autoenc wrote it before code_dim, decoder_type and norm existed,
# when the tutorial's design was every conv model's default; and the model fingerprint such a run saved.
OLD_CONV_CONFIG = {
    "name": "conv",
    "encoder": [{"num_layers": 4, "channels": 8, "kernel": 6, "stride": 1, "padding": 0, "activation": "leaky_relu"}],
    "pool": 2,
    "code_activation": "leaky_relu",
    "decoder": None,
    "output_activation": "sigmoid",
}
OLD_FINGERPRINT = {"model": {"name": "conv"}, "sparsity": {}, "input_shape": [1, 28, 28], "version": 2}


@pytest.mark.parametrize("name, decoder", [("conv", nn.Linear), ("conv_deconv", nn.ConvTranspose2d)])
def test_runs_saved_before_the_new_design_load_as_the_model_they_trained(name, decoder):
    import hashlib
    import json

    from autoenc_cli.schema.resolve import typed_config, with_former_values
    from autoenc_cli.training.checkpoint import model_fingerprint

    saved = {**OmegaConf.to_container(compose_config([])), "model": {**OLD_CONV_CONFIG, "name": name}}
    saved["model"].pop("decoder") if name == "conv_deconv" else None
    run = typed_config(saved, saved=True)
    assert run.model.code_dim is None and run.model.pool == 2 and run.model.encoder[0].norm == "none"
    model = build_model(run, (1, 28, 28))
    last_decoder_layer = model.decoder[-1] if name == "conv_deconv" else model.decoder[-1][0]
    assert model.code_dim == 128 and isinstance(last_decoder_layer, decoder)  # the 8x4x4 pooled code
    old = hashlib.sha256(json.dumps({**OLD_FINGERPRINT, "model": {"name": name}}, sort_keys=True).encode()).hexdigest()
    assert model_fingerprint(run, (1, 28, 28)) == old
    assert typed_config(with_former_values(saved)).model == run.model  # what a resumed run continues with
