"""The SAE architectures the field compares (issue 28): JumpReLU, Matryoshka, BatchTopK's inference threshold,
target-l0 control, collapse warnings, the l0 shorthand, and the SAELens export."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from autoenc_cli.evaluation.loading import load_run
from autoenc_cli.models.fc import FCAutoencoder, SparseFCModelConfig
from autoenc_cli.models.layers import LayerSpec
from autoenc_cli.sparsity.base import SparsityStack
from autoenc_cli.sparsity.jumprelu import JumpReLU, JumpReLUConfig, JumpReLUFunction, StepFunction
from autoenc_cli.sparsity.matryoshka import Matryoshka, MatryoshkaConfig, prefix_logits

from conftest import SAMPLE_CACHE, SAMPLE_VECTORS, only_run_dir, read_metrics, run_main, train_in

QUIET = ["trainer.figures=false", "trainer.pca_baseline=false"]
# Enough MNIST steps for a controller to settle: 2,000 digits in batches of 64 (25 steps an epoch), 10 epochs.
SETTLE = ["model=sparse_fc", "data.limit=2000", "data.batch_size=64", "trainer.epochs=10", *QUIET]


# ---------------------------------------------------------------------------------------------------
# JumpReLU's straight-through gradients against the paper's pseudo-derivatives, by hand.


def test_jumprelu_passes_values_above_the_threshold_with_the_papers_pseudo_derivatives():
    z = torch.tensor([[0.30, 0.52, 0.90], [0.47, 0.10, 1.20]], requires_grad=True)
    theta = torch.tensor([0.50, 0.50, 1.00], requires_grad=True)
    width = 0.1
    out = JumpReLUFunction.apply(z, theta, width)
    assert torch.equal(out, torch.tensor([[0.0, 0.52, 0.0], [0.0, 0.0, 1.20]]))
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out.backward(grad)
    # d/dz: H(z - theta); d/dtheta: -(theta / width) K((z - theta) / width), K = 1 where |u| < 1/2.
    assert torch.equal(z.grad, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 6.0]]))
    inside = ((z.detach() - theta.detach()).abs() < width / 2).float()
    assert torch.equal(inside, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    expected = (grad * -(theta.detach() / width) * inside).sum(dim=0)
    assert torch.allclose(theta.grad, expected) and theta.grad.tolist() == pytest.approx([-20.0, -10.0, 0.0])


def test_the_l0_step_gives_the_threshold_minus_one_over_bandwidth_and_the_code_nothing():
    z = torch.tensor([[0.30, 0.52, 0.90], [0.47, 0.10, 1.20]], requires_grad=True)
    theta = torch.tensor([0.50, 0.50, 1.00], requires_grad=True)
    step = StepFunction.apply(z, theta, 0.1)
    assert torch.equal(step, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    step.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    assert theta.grad.tolist() == pytest.approx([-10.0, -10.0, 0.0])  # one sample each within 0.05 of 0.5


def test_jumprelu_penalty_is_lam_times_the_mean_count_above_threshold():
    option = JumpReLU(JumpReLUConfig(lam=0.5, initial_threshold=0.4), code_dim=3)
    raw = torch.tensor([[0.1, 0.5, 0.9], [0.6, 0.2, 0.3]])
    output = type("Output", (), {"raw_code": raw, "code": option(raw)})()
    assert option.penalty(output, None, None).item() == pytest.approx(0.5 * (2 + 1) / 2)


# ---------------------------------------------------------------------------------------------------
# Matryoshka: each prefix's reconstruction error, value and gradient, by hand.


def tiny_sae(code_dim: int = 6, width: int = 4) -> FCAutoencoder:
    torch.manual_seed(0)
    config = SparseFCModelConfig(code_dim=code_dim, output_activation="linear", pre_bias=False)
    return FCAutoencoder(config, (width,))


def test_matryoshka_adds_each_prefix_reconstruction_error_with_hand_computed_gradients():
    model = tiny_sae()
    option = Matryoshka(MatryoshkaConfig(prefixes=[2, 4], weight=0.5), code_dim=6)
    code = torch.rand(5, 6)
    target = torch.randn(5, 4)
    output = model(target)._replace(code=code)
    penalty = option.penalty(output, target, model)
    weight, bias = model.decoder[0][0].weight, model.decoder[0][0].bias  # (4, 6), (4,)
    residuals = [code[:, :m] @ weight[:, :m].detach().t() + bias.detach() - target for m in (2, 4)]
    assert penalty.item() == pytest.approx(0.5 * sum(r.pow(2).mean().item() for r in residuals), rel=1e-6)
    penalty.backward()
    # d/dW[:, :m] of mean((W_m c_m + b - x)^2) = 2 / (batch * width) * r^T c_m, summed over the prefixes.
    expected = torch.zeros(4, 6)
    for m, r in zip((2, 4), residuals):
        expected[:, :m] += 0.5 * 2 / r.numel() * r.t() @ code[:, :m]
    assert torch.allclose(weight.grad, expected, atol=1e-6)
    expected_bias = sum(0.5 * 2 / r.numel() * r.sum(dim=0) for r in residuals)
    assert torch.allclose(bias.grad, expected_bias, atol=1e-6)


def test_matryoshka_prefix_logits_of_an_affine_decoder_equal_decoding_each_masked_code():
    model = tiny_sae()
    code = torch.rand(7, 6)
    fast = prefix_logits(model, code, (1, 3, 5))
    masked = [model.decode_logits(code * (torch.arange(6) < m)) for m in (1, 3, 5)]
    assert torch.allclose(fast, torch.stack(masked), atol=1e-6)
    deep = FCAutoencoder(
        SparseFCModelConfig(code_dim=6, encoder=[LayerSpec(width=5)], output_activation="linear"), (4,)
    )
    assert deep.affine_decoder() is None  # the general path: one batched decode of the masked codes
    general = prefix_logits(deep, code, (1, 3, 5))
    assert torch.allclose(general, torch.stack([deep.decode_logits(code * (torch.arange(6) < m)) for m in (1, 3, 5)]))


# ---------------------------------------------------------------------------------------------------
# Sparsity controls on the embedded digits: BatchTopK's threshold, target l0, collapse warnings.


@pytest.fixture(scope="module")
def settled(tmp_path_factory) -> dict[str, dict]:
    """One run per control: batch top-k 8, JumpReLU and L1 with target l0 8 (module-shared: they train once)."""
    runs = {}
    for name, options in {
        "batch_topk": ["sparsity=batch_topk", "l0=8"],
        "jumprelu": ["sparsity=jumprelu", "l0=8"],
        "l1": ["sparsity=l1", "l0=8", "sparsity.l1.target_l0_rate=0.03"],  # (0.02 needs about 16 epochs here)
    }.items():
        root = tmp_path_factory.mktemp(name)
        train_in(root, ["train", *SETTLE, *options])
        runs[name] = {"dir": only_run_dir(root), "metrics": read_metrics(only_run_dir(root))}
    return runs


def test_the_batch_topk_threshold_reproduces_the_batch_top_k_l0_on_held_out_digits(settled):
    run = load_run(settled["batch_topk"]["dir"], "last", "cpu")
    held_out = run.load_data().val.images  # digits the run never trained on
    codes = run.encode(held_out)  # evaluation mode: units above the saved threshold
    assert (codes != 0).sum(dim=1).float().mean().item() == pytest.approx(8, rel=0.05)
    assert settled["batch_topk"]["metrics"]["l0"] == pytest.approx(8, rel=0.05)
    assert run.model.code_transform.members["batch_topk"].threshold.item() > 0


@pytest.mark.parametrize("option", ["jumprelu", "l1"])
def test_a_target_l0_is_reached_within_ten_percent(settled, option):
    metrics = settled[option]["metrics"]
    assert metrics["l0"] == pytest.approx(8, rel=0.10), metrics["l0"]
    assert not metrics.get("notes")  # no "target not reached" warning
    state = torch.load(settled[option]["dir"] / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert state[f"code_transform.members.{option}.controller.log_scale"].item() != 0  # it adapted


def test_jumprelu_starts_from_the_threshold_that_keeps_the_target_on_training_data():
    option = JumpReLU(JumpReLUConfig(target_l0=2), code_dim=4)
    stack = SparsityStack({"jumprelu": option})
    assert stack.wants_codes
    raw = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.7, 0.2, 0.3, 0.8]])
    stack.initialise_from_codes(raw)  # 2 per sample: the 4 largest of 8 values kept, the 4th largest is 0.5
    assert option.threshold.tolist() == [0.5] * 4
    assert not JumpReLU(JumpReLUConfig(lam=1.0), code_dim=4).wants_codes  # no target: the configured start


@pytest.mark.parametrize(
    "options, message",
    [
        (["sparsity=l1", "lam=1"], "warning: sparsity.l1.lam=1 left the code all but dead on validation (l0 "),
        (["sparsity=l1", "lam=0"], "warning: sparsity.l1.lam=0 left the code dense (l0 "),
        (["sparsity=jumprelu"], "warning: sparsity.jumprelu.lam=0.001 left the code dense (l0 "),
        (["sparsity=batch_topk", "k=4", "sparsity.batch_topk.threshold_momentum=0.01"],
         "warning: sparsity.batch_topk.k=4 was not reached (l0 "),
        (["sparsity=jumprelu", "l0=8", "sparsity.jumprelu.target_l0_rate=0.0001",
          "sparsity.jumprelu.initial_threshold=0.0001"], "warning: sparsity.jumprelu.target_l0=8 was not reached (l0 "),
    ],
)  # fmt: skip
def test_a_penalty_that_collapsed_the_code_or_missed_its_target_warns_in_one_line(tmp_path, capsys, options, message):
    os.chdir(tmp_path)
    assert run_main(["train", "model=sparse_fc", *options, "data.limit=1000", "trainer.epochs=3", *QUIET]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(message), out
    assert read_metrics(only_run_dir(tmp_path))["notes"][0] == lines[0].removeprefix("warning: ")
    advice = {  # how each ends: what to change
        "lam=1 ": "units never active): lower it, or set a target_l0 (l0=N) to let it adapt",
        "jumprelu.lam": "set a target_l0 (l0=N): under Adam the thresholds move about optimizer.lr per step "
        "whatever lam is",
        "batch_topk": "train longer, or raise sparsity.batch_topk.threshold_momentum=0.01",
    }
    for key, ending in advice.items():
        assert key not in message or lines[0].endswith(ending), lines[0]


# ---------------------------------------------------------------------------------------------------
# l0=N: one shorthand for every option's sparsity level.


@pytest.mark.parametrize(
    "options, key, value",
    [
        (["sparsity=topk"], "topk.k", 12),
        (["sparsity=batch_topk"], "batch_topk.k", 12),
        (["sparsity=jumprelu"], "jumprelu.target_l0", 12.0),
        (["sparsity=l1"], "l1.target_l0", 12.0),
        (["sparsity=[batch_topk,matryoshka]"], "batch_topk.k", 12),
    ],
)
def test_the_l0_shorthand_sets_each_options_own_sparsity_level(options, key, value):
    from autoenc_cli.compose import run_config

    config = run_config(["model=sparse_fc", *options, "l0=12"])
    option, field = key.split(".")
    assert getattr(config.sparsity[option], field) == value and type(getattr(config.sparsity[option], field)) is type(
        value
    )


ERROR = "autoenc: error: "


@pytest.mark.parametrize(
    "options, message",
    [
        (["sparsity=lifetime", "l0=4"], "l0=4 is not allowed: sparsity=lifetime has no l0 to set (the k of "
         "topk/batch_topk, the target_l0 of jumprelu/l1)"),
        (["sparsity=topk", "l0=4.5"], "l0=4.5 is not allowed: sets sparsity.topk.k, a whole number of units"),
        (["sparsity=topk", "l0=4", "sparsity.topk.k=16"], "l0=4 and sparsity.topk.k=16 set the same"),
        (["sparsity=jumprelu", "l0=64"], "sparsity.jumprelu.target_l0=64.0 is not allowed: must be below the code "
         "size model.code_dim=64"),
        (["sparsity=topk", "k=16", "l0=8"], "k=16 and l0=8 both set sparsity.topk.k; give only one"),
        (["sparsity=l1", "l0=8", "model=fc"], "sparsity.l1.target_l0=8.0 is not allowed: needs a code that is "
         "exactly zero when off"),
        (["sparsity=l1", "l0=8", "lam=0"], "sparsity.l1.lam=0 is not allowed: target_l0 adapts lam by scaling it"),
        (["sparsity=matryoshka", "sparsity.matryoshka.prefixes=[8,4]"], "sparsity.matryoshka.prefixes[1]=4 is not "
         "allowed: sizes must increase (it follows 8)"),
        (["sparsity=matryoshka", "sparsity.matryoshka.prefixes=[8,64]"], "sparsity.matryoshka.prefixes[1]=64 is not "
         "allowed: must be below the code size"),
    ],
)  # fmt: skip
def test_bad_sparsity_levels_are_one_line_errors(tmp_path, capsys, options, message):
    os.chdir(tmp_path)
    model = [] if any(option.startswith("model=") for option in options) else ["model=sparse_fc"]
    assert run_main(["train", *model, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(ERROR + message) and err.count("\n") == 1, err
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------------------------------------------
# The SAELens format, read back with a reader written from SAELens's documented format.


def saelens_read(folder: Path) -> tuple[dict, dict]:
    config = json.loads((folder / "cfg.json").read_text())
    return config, load_file(folder / "sae_weights.safetensors")


def saelens_encode(config: dict, tensors: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens's SAE.encode for standard, topk and jumprelu (normalize_activations none)."""
    hidden = (x - tensors["b_dec"] * config["apply_b_dec_to_input"]) @ tensors["W_enc"] + tensors["b_enc"]
    if config["architecture"] == "topk":
        values, indices = hidden.topk(config["k"], dim=-1, sorted=False)
        return torch.zeros_like(hidden).scatter(-1, indices, values.relu())
    if config["architecture"] == "jumprelu":
        return hidden.relu() * (hidden > tensors["threshold"])
    return hidden.relu()


def saelens_decode(tensors: dict, codes: torch.Tensor) -> torch.Tensor:
    return codes @ tensors["W_dec"] + tensors["b_dec"]


SAE_RUN = ["model=sparse_fc", "data=activations", f"data.path={SAMPLE_CACHE}", "model.code_dim=24", "data.batch_size=8"]


@pytest.mark.parametrize(
    "options, architecture, training",
    [
        (["sparsity=topk", "k=4", "model.unit_norm_decoder=true"], "topk", "topk"),
        (["sparsity=topk", "k=4"], "topk", "topk"),  # decoder norms kept: folding them would change the top k
        (["sparsity=batch_topk", "k=4"], "jumprelu", "batchtopk"),
        (["sparsity=[batch_topk,matryoshka]", "k=4", "sparsity.matryoshka.prefixes=[4,12]"], "jumprelu",
         "matryoshka_batchtopk"),
        (["sparsity=jumprelu", "l0=4", "data.normalize=standardize"], "jumprelu", "jumprelu"),
        (["sparsity=l1", "data.normalize=none"], "standard", "standard"),
    ],
)  # fmt: skip
def test_a_saelens_export_encodes_and_decodes_raw_activations_as_the_run_does(
    tmp_path, capsys, options, architecture, training
):
    os.chdir(tmp_path)
    assert run_main(["train", *SAE_RUN, *options, *QUIET]) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_main(["export", f"run={run_dir}", "out=sae", "format=saelens"]) == 0
    assert "load it with: from sae_lens import SAE; SAE.load_from_disk('sae')" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    config, tensors = saelens_read(tmp_path / "sae")
    d_sae = 24
    assert config["architecture"] == architecture and (config["d_in"], config["d_sae"]) == (16, d_sae)
    assert config["normalize_activations"] == "none" and config["dtype"] == "float32"
    assert tensors["W_enc"].shape == (16, d_sae) and tensors["W_dec"].shape == (d_sae, 16)
    assert tensors["b_enc"].shape == (d_sae,) and tensors["b_dec"].shape == (16,)
    assert ("threshold" in tensors) == (architecture == "jumprelu") and ("k" in config) == (architecture == "topk")
    metadata = config["metadata"]
    assert metadata["sae_lens_version"] >= "6" and metadata["training_architecture"] == training
    best = read_metrics(run_dir)["best_epoch"]  # the exported checkpoint's epoch, whose l0 the metadata gives
    with open(run_dir / "history.csv") as handle:
        row = [row for row in csv.DictReader(handle) if row["epoch"] == str(best)][-1]
    assert metadata["l0"] == float(row["l0"]) and metadata["num_dead_features"] == round(
        float(row["dead_fraction"]) * 24
    )
    assert metadata["hook_name"] == "model.layers.0" and metadata["context_size"] == 9
    norms = tensors["W_dec"].norm(dim=1)
    assert torch.allclose(norms, torch.ones(d_sae), atol=1e-5) == metadata["autoenc_folded"]["unit_norm_decoder_rows"]
    run = load_run(run_dir, "best", "cpu")
    raw = torch.from_numpy(np.load(SAMPLE_VECTORS).astype(np.float16).astype(np.float32))  # the cache's values
    ours = run.encode(raw)
    theirs = saelens_encode(config, tensors, raw)
    # Folding scales each unit by its decoder column's norm in raw units: codes compare in the export's units.
    folded = metadata["autoenc_folded"]["unit_norm_decoder_rows"]
    scale = raw_decoder_norms(run) if folded else torch.ones(d_sae)
    assert torch.equal(ours != 0, theirs != 0)
    assert torch.allclose(ours * scale, theirs, atol=1e-5)
    assert torch.allclose(saelens_decode(tensors, theirs), run.reconstruct(raw), atol=1e-5)


def raw_decoder_norms(run) -> torch.Tensor:
    """The norm of each unit's decoder column once the run's normalisation is undone (raw activation units)."""
    weight, _ = run.model.affine_decoder()
    normalisation = run.input_normalisation()
    divisor = normalisation.divisor.flatten().expand(weight.shape[0]) if normalisation is not None else torch.ones(1)
    return (weight.detach() * divisor[:, None]).norm(dim=0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["model=sparse_fc"], "autoenc: error: format=saelens needs a linear output (model.output_activation=linear)"),
        (["model=fc", "data=vectors", f"data.path={SAMPLE_VECTORS}"], "autoenc: error: format=saelens needs a ReLU"),
        (["model=sparse_fc", "model.encoder=[{width:8}]", "data=vectors", f"data.path={SAMPLE_VECTORS}"],
         "autoenc: error: format=saelens needs a sparse autoencoder: one linear encoder layer"),
    ],
)  # fmt: skip
def test_a_model_saelens_cannot_hold_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, options, message):
    os.chdir(tmp_path)
    assert run_main(["train", *options, "trainer.epochs=1", *QUIET]) == 0
    capsys.readouterr()
    assert run_main(["export", f"run={only_run_dir(tmp_path)}", "out=sae", "format=saelens"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "sae").exists()


def test_a_saelens_export_over_an_autoenc_export_replaces_it_and_never_mixes_the_two(tmp_path):
    os.chdir(tmp_path)
    assert run_main(["train", *SAE_RUN, "sparsity=topk", "k=4", *QUIET]) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_main(["export", f"run={run_dir}", "out=sae"]) == 0
    assert run_main(["export", f"run={run_dir}", "out=sae", "format=saelens"]) == 2  # an earlier export: refused
    assert sorted(path.name for path in (tmp_path / "sae").iterdir()) == ["config.json", "model.safetensors"]
    assert run_main(["export", f"run={run_dir}", "out=sae", "format=saelens", "overwrite=true"]) == 0
    assert sorted(path.name for path in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


@pytest.mark.parametrize("option, key", [("topk", "k"), ("jumprelu", "target_l0")])
def test_a_run_trained_with_l0_exports_and_loads_back(tmp_path, option, key):
    os.chdir(tmp_path)
    assert run_main(["train", *SAE_RUN, f"sparsity={option}", "l0=4", *QUIET]) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_main(["export", f"run={run_dir}", "out=model"]) == 0  # its config holds l0=4.0 and k=4: one value
    exported, trained = load_run(tmp_path / "model"), load_run(run_dir)
    raw = torch.from_numpy(np.load(SAMPLE_VECTORS))
    assert getattr(exported.config.sparsity[option], key) == 4
    assert torch.equal(exported.encode(raw), trained.encode(raw))


def test_batch_topk_checkpoints_written_under_the_former_momentum_default_still_belong_to_their_config():
    from autoenc_cli.compose import run_config
    from autoenc_cli.training.checkpoint import model_fingerprint

    def fingerprint(momentum: str) -> str:
        config = run_config(
            ["model=sparse_fc", "sparsity=batch_topk", f"sparsity.batch_topk.threshold_momentum={momentum}"]
        )
        return model_fingerprint(config, (1, 28, 28))

    # A checkpoint written when 0.01 was the default left it out of its fingerprint, as one of 0.2 does now.
    assert fingerprint("0.01") == fingerprint("0.2") != fingerprint("0.5")


@pytest.mark.parametrize(
    "override, hinted",
    [("data.path=/nowhere", True), ("sparsity.jumprelu.bandwidth=0.1", False), ("nonsense=1", False)],
)
def test_an_unknown_key_in_a_sweep_over_presets_says_to_select_the_group(tmp_path, capsys, override, hinted):
    os.chdir(tmp_path)
    assert run_main(["train", "-m", "experiment=lm_sae,lm_sae_jumprelu", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoenc: error: unknown key") and err.count("\n") == 1, err
    hint = "(a sweep over experiment= composes its base config without the swept presets: select the data option"
    assert (hint in err) == hinted, err


def test_a_saelens_export_of_a_run_whose_cache_moved_says_what_its_config_lacks(tmp_path, capsys):
    import shutil

    os.chdir(tmp_path)
    cache = shutil.copytree(SAMPLE_CACHE, tmp_path / "cache")
    run = ["model=sparse_fc", "data=activations", f"data.path={cache}", "data.normalize=none", "model.code_dim=24"]
    assert run_main(["train", *run, "data.heldout_tokens=0", "sparsity=topk", "k=4", "trainer.epochs=1", *QUIET]) == 0
    shutil.rmtree(cache)  # the weights need no cache without a normalisation: only the names do
    capsys.readouterr()
    assert run_main(["export", f"run={only_run_dir(tmp_path)}", "out=sae", "format=saelens"]) == 0
    assert "note: cfg.json names no language model or context size: " in capsys.readouterr().out
    config, _ = saelens_read(tmp_path / "sae")
    assert "model_name" not in config["metadata"] and config["architecture"] == "topk"
