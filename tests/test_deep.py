"""Deep autoencoders: tied weights, greedy layer-wise stages, untying, stage checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoenc_cli.build import build_model, build_parts
from autoenc_cli.errors import ConfigError
from autoenc_cli.job import count_parameters
from autoenc_cli.models.fc import LayerwiseStage
from autoenc_cli.models.layers import TiedLinear
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.training.loop import Trainer

from conftest import TINY, compose_config, only_run_dir, read_metrics, run_main

SMALL_DEEP = [*TINY, "experiment=deep_fc_2d", "schedule.epochs_per_stage=1", "trainer.epochs=2"]


def test_experiments_compose_the_papers_networks():
    run = resolve(compose_config(["experiment=deep_fc"]))
    model = build_model(run, (1, 28, 28))
    widths = [block[0].out_features for block in model.encoder[1:]]
    assert widths == [1000, 500, 250, 30] and model.is_tied and run.schedule.name == "greedy"
    run_2d = resolve(compose_config(["experiment=deep_fc_2d"]))
    assert [block[0].out_features for block in build_model(run_2d, (1, 28, 28)).encoder[1:]] == [128, 64, 32, 2]
    # Hinton & Salakhutdinov's network: logistic hidden units, a linear code, cross-entropy fine-tuning.
    hinton = resolve(compose_config(["experiment=hinton2006"]))
    model = build_model(hinton, (1, 28, 28))
    assert [block[0].out_features for block in model.encoder[1:]] == [1000, 500, 250, 30] and model.is_tied
    assert [type(block[1]) for block in model.encoder[1:]] == [nn.Sigmoid, nn.Sigmoid, nn.Sigmoid, nn.Identity]
    assert (hinton.loss.name, hinton.optimizer.name, hinton.schedule.name, hinton.schedule.policy) == (
        "bce",
        "adamw",
        "greedy",
        "cosine",
    )
    assert (hinton.optimizer.weight_decay, hinton.trainer.epochs) == (0.03, 300)  # chosen on validation


def test_tied_decoder_uses_the_transposed_encoder_weight_and_counts_it_once():
    tied = build_model(
        resolve(compose_config(["model.encoder=[{width: 20}]", "model.code_dim=5", "model.tied=true"])), (1, 4, 4)
    )
    untied = build_model(resolve(compose_config(["model.encoder=[{width: 20}]", "model.code_dim=5"])), (1, 4, 4))
    decoder_layers = [block[0] for block in tied.decoder]
    assert all(isinstance(layer, TiedLinear) for layer in decoder_layers)
    assert decoder_layers[0].weight.data_ptr() == tied.encoder[2][0].weight.data_ptr()
    assert count_parameters(untied) - count_parameters(tied) == 16 * 20 + 20 * 5
    tied(torch.rand(3, 1, 4, 4)).reconstruction.sum().backward()
    assert tied.encoder[1][0].weight.grad is not None  # the decoder's gradient reaches the shared weight


@pytest.mark.parametrize("experiment", ["deep_fc_2d", "deep_fc", "hinton2006"])
def test_untying_keeps_outputs_exactly_and_gives_each_decoder_layer_its_own_weight(experiment):
    model = build_model(resolve(compose_config([f"experiment={experiment}"])), (1, 28, 28))
    x = torch.rand(64, 1, 28, 28)
    before = model(x).reconstruction
    model.untie()
    assert not model.is_tied and all(isinstance(block[0], nn.Linear) for block in model.decoder)
    assert torch.equal(model(x).reconstruction, before)  # bit for bit, not approximately
    assert model.decoder[0][0].weight.data_ptr() != model.encoder[4][0].weight.data_ptr()
    model(x).reconstruction.sum().backward()  # the untied copies train on their own
    assert model.decoder[0][0].weight.grad is not None and model.decoder[0][0].weight.requires_grad


def test_greedy_stages_train_one_layer_pair_each_on_frozen_outer_layers():
    parts = build_parts(resolve(compose_config(SMALL_DEEP)))
    model, phases = parts.model, parts.phases
    assert [phase.name for phase in phases] == ["stage1", "stage2", "stage3", "stage4", "finetune"]
    outer_before = model.encoder[1][0].weight.detach().clone()
    stage, trainable = phases[1].enter(model)
    assert isinstance(stage, LayerwiseStage) and stage.code_dim == 64 and model.code_dim == 2  # a view, model intact
    expected = {id(p) for module in model.layer_pair(1) for p in module.parameters()}
    assert {id(p) for p in trainable} == expected and all(p.requires_grad for p in trainable)
    assert not model.encoder[1][0].weight.requires_grad and not model.encoder[3][0].weight.requires_grad
    output = stage(torch.rand(4, 1, 28, 28))
    assert output.code.shape == (4, 64) and output.reconstruction.shape == (4, 1, 28, 28)  # target: the image
    assert model(torch.rand(4, 1, 28, 28)).code.shape == (4, 2)
    trainer = Trainer(parts)
    trainer.fit()
    assert not torch.equal(model.encoder[1][0].weight, outer_before)  # trained in stage 1 and fine-tuning
    assert trainer.network is model and not model.is_tied  # fine-tuned untied, the whole network
    stages = [row.stage for row in trainer.result.history]
    assert stages == ["stage1", "stage2", "stage3", "stage4", "finetune", "finetune"]


def test_frozen_layers_do_not_change_during_a_stage():
    parts = build_parts(resolve(compose_config([*SMALL_DEEP, "schedule.untie=false"])))
    model = parts.model
    parts.phases = parts.phases[:1]
    Trainer(parts).fit()
    after_stage1 = model.encoder[1][0].weight.detach().clone()
    full = build_parts(resolve(compose_config([*SMALL_DEEP, "schedule.untie=false"])))
    full.phases = full.phases[:2]
    trainer = Trainer(full)
    trainer.fit()
    assert torch.equal(full.model.encoder[1][0].weight, after_stage1)  # stage 2 left layer 1 as stage 1 made it
    assert len(trainer.optimizer.param_groups[0]["params"]) == 3  # encoder weight, bias, decoder bias (tied)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.tied=true", "model.decoder=[{width: 10}, {width: null}]"],
            "model.tied=True is not allowed: needs a decoder that mirrors",
        ),
        (
            ["schedule=greedy", "schedule.stage_epochs=[1,2,3]"],
            "schedule.stage_epochs=[1, 2, 3] is not allowed: one entry per encoder layer",
        ),
        (["schedule=greedy"], "schedule.untie=True is not allowed: needs model.tied=true"),
        (["schedule=greedy", "model=conv"], "schedule.name='greedy' is not allowed: needs a fully-connected model"),
    ],
)
def test_bad_deep_configs_fail_before_training(overrides, message):
    with pytest.raises(ConfigError) as caught:
        resolve(compose_config([*TINY, *overrides]))
    assert message in str(caught.value)


def test_greedy_run_writes_stage_checkpoints_history_and_figures(tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *SMALL_DEEP]) == 0
    run_dir = only_run_dir(tmp_path)
    for name in ("stage1", "stage2", "stage3", "stage4", "finetune", "last", "best"):
        assert (run_dir / "checkpoints" / f"{name}.pt").is_file(), name
    for figure in ("stages.png", "latent_scatter.png"):
        assert (run_dir / "figures" / figure).is_file()
    with open(run_dir / "history.csv") as handle:
        assert [row["stage"] for row in csv.DictReader(handle)][-2:] == ["finetune", "finetune"]
    metrics = read_metrics(run_dir)
    assert metrics["epochs"] == 6 and metrics["code_dim"] == 2
