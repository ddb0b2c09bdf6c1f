"""The whole-config check: every rule, within a group and across groups, before anything is built.

``check_config`` is the one entry point. Field rules (ranges, choices) and each option's own
``check()`` run first; then the facts a run implies are derived from the config alone (the input
shape the data will give, the model's code size and activations), and every option checks itself
against them with ``check_with(facts)``. A sweep calls the same function for every job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.schema.fields import check_tree, with_prefix
from autoenc_cli.schema.root import GROUPS, SHORTHANDS, STACKED_GROUPS, TrainerConfig, shorthand_field

if TYPE_CHECKING:
    from autoenc_cli.schema.root import TrainConfig


@dataclass(frozen=True)
class ModelFacts:
    """What a model config implies for an input shape, without building it."""

    code_dim: int
    code_activation: str
    output_activation: str
    layer_widths: Optional[tuple[int, ...]] = None  # fully-connected: encoder widths, the code's last
    tied: bool = False
    variational: bool = False  # a Gaussian code (model=vae): its loss is a likelihood summed over the input


@dataclass(frozen=True)
class Facts:
    config: "TrainConfig"
    input_shape: tuple[int, ...]
    model: ModelFacts


def check_config(config: "TrainConfig", input_shape: Optional[tuple[int, ...]] = None) -> Facts:
    """Apply every rule to a typed run config; the first broken rule is a one-line ConfigError.

    ``input_shape``: the shape the model takes, when it is known without the data (an export's)."""
    check_tree(config)
    if input_shape is None:
        input_shape = with_prefix("data", config.data.input_shape)
    model = with_prefix("model", lambda: config.model.describe(input_shape))
    facts = Facts(config, tuple(input_shape), model)
    if config.trainer.nll_samples != TrainerConfig.nll_samples and not model.variational:
        raise ConfigError(
            "trainer.nll_samples",
            config.trainer.nll_samples,
            "scores variational models only (model=vae): leave it out",
        )
    for group in GROUPS:
        option = getattr(config, group)
        members = option.items() if group in STACKED_GROUPS else [(None, option)]
        for name, member in members:
            prefix = f"{group}.{name}" if name else group
            with_prefix(prefix, lambda member=member: member.check_with(facts))
    return facts


def check_shorthands(overrides: list[str]) -> None:
    """``k=5 sparsity.topk.k=16`` or ``experiment=A experiment=B`` names one value twice: refused, never
    silently resolved."""
    given: dict[str, str] = {}
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in given and not key.startswith("~"):
            raise UserError(
                f"{key} is given twice ({key}={given[key]} and {key}={value}); give it once (Hydra would silently "
                "keep the last)"
            )
        given[key] = value
    for key, group in SHORTHANDS.items():
        for full, value in given.items():
            parts = full.split(".")
            if key in given and len(parts) == 3 and parts[0] == group and not _same_value(given[key], value):
                if parts[2] == _shorthand_target(key, group, parts[1]):
                    raise UserError(f"{key}={given[key]} and {full}={value} set the same value; give only one of them")


def _same_value(one: str, other: str) -> bool:
    """Equal as given, or as numbers (``l0=16.0`` sets ``k=16``)."""
    try:
        return one == other or float(one) == float(other)
    except ValueError:
        return False


def _shorthand_target(key: str, group: str, option: str) -> Optional[str]:
    """The key of ``group``'s option ``option`` that the shorthand ``key`` sets (``l0``: topk's k)."""
    if key != "l0":
        return key
    from autoenc_cli.registry import REGISTRY

    try:
        return shorthand_field(key, REGISTRY.config_class(group, option))
    except ConfigError:  # an unknown option: named as such when the config is typed
        return None
