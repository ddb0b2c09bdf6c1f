"""Config composition, schemas and the registry."""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import ClassVar

import pytest

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.registry import REGISTRY, Registry
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.schema.root import GROUPS, STACKED_GROUPS, TrainConfig, TrainerConfig

from conftest import SAMPLE_CACHE, SAMPLE_NPZ, SAMPLE_VECTORS, case_id, compose_config

# Options with a mandatory value (``???``) and what the tests fill in.
REQUIRED = {
    "npz": [f"data.path={SAMPLE_NPZ}"],
    "vectors": [f"data.path={SAMPLE_VECTORS}"],
    "image_folder": ["data.path=images"],
    "activations": [f"data.path={SAMPLE_CACHE}"],
    "greedy": ["model.tied=true"],  # untying (the greedy default) needs tied weights
}


def group_options(group: str) -> list[str]:
    folder = resources.files("autoenc_cli.configs") / group
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def test_default_config_resolves_to_typed_objects():
    run = resolve(compose_config())
    assert isinstance(run, TrainConfig) and isinstance(run.trainer, TrainerConfig)
    assert (run.model.name, run.model.code_dim, run.model.code_activation) == ("fc", 64, "linear")
    assert (run.data.name, run.loss.name, run.optimizer.name, run.schedule.name) == (
        "mnist_5k",
        "mse",
        "adam",
        "standard",
    )
    assert (run.sparsity, run.noise.name) == ({}, "none")
    assert run.trainer.epochs == 20 and run.schedule.policy == "plateau" and run.schedule.patience == 10


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_is_registered(group):
    options = group_options(group)
    assert options, f"configs/{group} has no options"
    for option in options:
        run = resolve(compose_config([f"{group}={option}", *REQUIRED.get(option, [])]))
        node = getattr(run, group)
        if group in STACKED_GROUPS:  # {name: config}; `none` selects no member
            assert list(node) == ([] if option == "none" else [option])
            node = node.get(option)
            if node is None:
                continue
        assert dataclasses.is_dataclass(node)
        assert REGISTRY.config_class(group, node.name) is type(node)


def test_overrides_reach_the_typed_config():
    run = resolve(
        compose_config(["optimizer.lr=3e-4", "trainer.epochs=5", "model.code_dim=32", "data.batch_size=128", "seed=3"])
    )
    assert (run.optimizer.lr, run.trainer.epochs, run.model.code_dim, run.data.batch_size, run.seed) == (
        3e-4,
        5,
        32,
        128,
        3,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=abc"], "optimizer.lr='abc' has the wrong type; expected float"),
        (["seed=1.5"], "seed=1.5 has the wrong type; expected integer"),
        (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: must be > 0"),
        (["trainer.epochs=-1"], "trainer.epochs=-1 is not allowed: must be >= 1"),
        (["+model.code_dimm=3"], "unknown key 'model.code_dimm'"),
        (["model.encoder=[{width:0}]"], "model.encoder[0].width=0 is not allowed: must be >= 1"),
        (
            ["model.encoder=[{width:8,activation:swish}]"],
            "model.encoder[0].activation='swish' is not allowed: choose one of",
        ),
        (["trainer.device=gpu"], "trainer.device='gpu' is not allowed"),
        (["schedule.policy=step"], "schedule.policy='step' is not allowed: choose one of constant, cosine, plateau"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5 is not allowed: must be > 0 and < 1"),
        (
            ["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
            "optimizer.nesterov=True is not allowed: needs momentum > 0",
        ),
        (["model.name=nope"], "model.name='nope' is not allowed: choose one of conv, conv_deconv, conv_vae, fc"),
    ],
)
def test_bad_values_give_one_line_errors(overrides, message):
    with pytest.raises(UserError) as caught:
        resolve(compose_config(overrides))
    text = str(caught.value)
    assert message in text and "\n" not in text


def _bounded_fields(schema: type, prefix: str):
    for field in dataclasses.fields(schema):
        if field.metadata.get("bounds"):
            yield f"{prefix}{field.name}", field.metadata["bounds"]


def bounded_knobs() -> list[tuple[list[str], str, dict]]:
    """Every numeric knob with bounds: (overrides that select its option, its key, its bounds)."""
    schemas = [([], TrainConfig, ""), ([], TrainerConfig, "trainer.")]
    for group in GROUPS:
        for option in group_options(group):
            if group in STACKED_GROUPS:  # members live under their name: sparsity.topk.k
                if option in REGISTRY.names(group):
                    schema = REGISTRY.config_class(group, option)
                    schemas.append(([f"{group}={option}", *REQUIRED.get(option, [])], schema, f"{group}.{option}."))
                continue
            schema = REGISTRY.config_class(group, compose_config([f"{group}={option}"])[group].name)
            schemas.append(([f"{group}={option}", *REQUIRED.get(option, [])], schema, f"{group}."))
    return [
        (choice, key, bounds) for choice, schema, prefix in schemas for key, bounds in _bounded_fields(schema, prefix)
    ]


def out_of_range_values(bounds: dict) -> list:
    """One value just outside each bound."""
    step = {"gt": 0, "ge": -1, "lt": 0, "le": 1}
    return [limit + step[name] for name, limit in bounds.items()]


@pytest.mark.parametrize(("choice", "key", "bounds"), bounded_knobs(), ids=case_id)
def test_every_bounded_numeric_knob_rejects_out_of_range_values(choice, key, bounds):
    for value in out_of_range_values(bounds):
        with pytest.raises(ConfigError) as caught:
            resolve(compose_config([*choice, f"{key}={value}"]))
        assert caught.value.key == key


def test_registry_rejects_duplicates_and_lists_names():
    @dataclasses.dataclass
    class ThingConfig:
        group: ClassVar[str] = "thing"
        name: str = "a"

    @dataclasses.dataclass
    class OtherThingConfig(ThingConfig):
        name: str = "b"

    registry = Registry()
    registry.register(ThingConfig)(lambda config: f"built-{config.name}")
    registry.register(OtherThingConfig)(lambda config, suffix: f"built-{config.name}{suffix}")
    with pytest.raises(ValueError):
        registry.register(ThingConfig)(lambda config: None)
    assert registry.names("thing") == ["a", "b"]
    with pytest.raises(ConfigError, match="choose one of a, b"):
        registry.entry("thing", "c")
    assert registry.build(OtherThingConfig(), "!") == "built-b!" and registry.config_class("thing", "a") is ThingConfig


def test_registry_groups_cover_every_config_group():
    assert set(GROUPS) <= set(REGISTRY.groups())


TUTORIAL_SPARSE = {
    "sparse_topk_16": ("topk", "k", 16),
    "sparse_topk_5": ("topk", "k", 5),
    "sparse_lifetime_25": ("lifetime", "rate", 0.25),
    "sparse_lifetime_5": ("lifetime", "rate", 0.05),
    "sparse_kl_0.01": ("kl", "lam", 0.01),
    "sparse_kl_0.1": ("kl", "lam", 0.1),
}


# Presets whose data option needs a file: given a small one.
PRESET_DATA = {
    name: [f"data.path={SAMPLE_CACHE}"]
    for name in ("lm_sae", "lm_sae_batch_topk", "lm_sae_jumprelu", "lm_sae_matryoshka", "lm_sae_l1")
}
# The SAE architectures compared on a language model (issue 28): each preset's sparsity options and level.
LM_ARCHITECTURES = {
    "lm_sae_batch_topk": (["batch_topk"], "batch_topk", "k", 32),
    "lm_sae_jumprelu": (["jumprelu"], "jumprelu", "target_l0", 32),
    "lm_sae_matryoshka": (["batch_topk", "matryoshka"], "batch_topk", "k", 32),
    "lm_sae_l1": (["l1"], "l1", "target_l0", 32),
}


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_preset_resolves(experiment):
    run = resolve(compose_config([f"experiment={experiment}", *PRESET_DATA.get(experiment, [])]))
    name = experiment.removeprefix("tutorial_")  # tutorial_topk_16 builds on sparse_topk_16
    sparse = TUTORIAL_SPARSE.get(name if name.startswith("sparse_") else f"sparse_{name}")
    if experiment.startswith("tutorial_"):  # the gallery's presets: the tutorial's batch size, a caption each
        assert run.data.batch_size == 512 and run.optimizer.name == "adam" and run.optimizer.lr == 1e-3
        assert run.schedule.policy == "plateau" and run.gallery.caption and run.gallery.panels
    if sparse is not None:  # the source tutorial's sparse figures, one preset per sweep job
        option, knob, value = sparse
        assert run.model.name == "sparse_fc" and list(run.sparsity) == [option]
        assert getattr(run.sparsity[option], knob) == value
    elif experiment == "smoke":
        assert run.model.name == "fc" and (run.data.limit, run.trainer.epochs) == (400, 2)
    elif experiment.startswith("deep_fc") or experiment == "hinton2006":
        assert run.model.name == "fc" and run.schedule.name == "greedy" and run.model.tied
    elif experiment == "lm_sae":  # Gao et al. 2024's top-k recipe on a language model's activation cache
        assert (run.model.name, run.model.code_dim, run.model.output_activation) == ("sparse_fc", 4096, "linear")
        assert run.model.unit_norm_decoder and run.data.name == "activations" and run.sparsity["topk"].k == 32
        assert (run.sparsity["topk"].aux_k, run.data.normalize, run.trainer.epochs) == (256, "unit_mean_square", 1)
    elif experiment in LM_ARCHITECTURES:  # lm_sae's settings, another architecture
        options, option, knob, value = LM_ARCHITECTURES[experiment]
        assert list(run.sparsity) == options and getattr(run.sparsity[option], knob) == value
        assert (run.model.code_dim, run.model.unit_norm_decoder, run.data.batch_size) == (4096, True, 1024)
        if "matryoshka" in options:
            assert run.sparsity["matryoshka"].prefixes == [128, 512, 2048]


def test_a_new_option_is_one_module_in_its_group_package(tmp_path, monkeypatch):
    """Discovery imports every module of a group's package: no list of module names to edit."""
    package = tmp_path / "my_sparsities"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "halves.py").write_text(
        "from dataclasses import dataclass\n"
        "from autoenc_cli.sparsity.base import Sparsity, SparsityConfig\n"
        "from autoenc_cli.registry import REGISTRY\n"
        "@dataclass\nclass HalvesConfig(SparsityConfig):\n    name: str = 'halves'\n"
        "@REGISTRY.register(HalvesConfig)\nclass Halves(Sparsity):\n"
        "    def __init__(self, config, code_dim):\n        super().__init__()\n"
        "    def forward(self, code):\n        return code / 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY.names("sparsity")  # the real options first; the test's option goes into a copy that is undone
    monkeypatch.setattr(REGISTRY, "_entries", dict(REGISTRY._entries))
    monkeypatch.setattr(REGISTRY, "_packages", {**REGISTRY._packages, "extra": "my_sparsities"})
    monkeypatch.setattr(REGISTRY, "_discovered", False)
    assert "halves" in REGISTRY.names("sparsity")
    import torch

    layer = REGISTRY.build(REGISTRY.config_class("sparsity", "halves")(), 2)
    assert torch.equal(layer(torch.ones(2)), torch.full((2,), 0.5))
