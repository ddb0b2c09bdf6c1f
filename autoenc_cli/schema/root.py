"""The top-level run schema. Group nodes (model, data, ...) are typed by the registry per option."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import GROUP_PACKAGES
from autoenc_cli.schema.fields import choice, number

if TYPE_CHECKING:
    from autoenc_cli.schema.check import Facts

# Config groups whose options are looked up in the registry by their ``name`` key.
GROUPS = tuple(GROUP_PACKAGES)

# Groups where several options may be selected at once (``sparsity=[topk,lifetime]``): the group's
# node maps each selected option's name to its config, in the order listed; none selected is valid.
STACKED_GROUPS = ("sparsity", "logger")

# Groups added after runs were saved, and the option a saved config without the group trained with.
FORMER_GROUPS = {"augment": {"name": "none"}}

# Top-level shorthands (``k=16``) for a key of a group's member (``sparsity.topk.k``), so sweeps read
# naturally; applied where exactly one selected member has the key. ``l0`` sets whichever key sets an
# option's l0 (its config's ``l0_field``: top-k's k, JumpReLU's target_l0), so one sweep spans options.
SHORTHANDS = {"k": "sparsity", "lam": "sparsity", "l0": "sparsity"}


def shorthand_field(key: str, option: Any) -> Optional[str]:
    """The key of ``option`` (a member's config or config class) that the shorthand ``key`` sets; None: none."""
    if key == "l0":
        return getattr(option, "l0_field", None)
    fields = {f.name for f in dataclasses.fields(option)} if dataclasses.is_dataclass(option) else set()
    return key if key in fields else None


@dataclass
class GroupConfig:
    """Base of every group option's schema: ``name`` selects the registered component.

    ``check()`` (optional) checks the option on its own; ``check_with(facts)`` checks it against the
    rest of the run (code size, activations, input shape), before anything is built.
    """

    group: ClassVar[str] = "?"
    name: str = "?"

    def check_with(self, facts: "Facts") -> None:
        """Rules that need other groups; raise ConfigError with a key relative to this group."""


@dataclass
class TrainerConfig:
    epochs: int = number(20, ge=1)  # training epochs (of each phase a multi-phase schedule has)
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda or cuda:N
    log_every: int = number(10, ge=1)  # steps between loss read-backs (and progress-bar updates)
    eval_batch_size: int = number(1024, ge=1)  # samples per validation batch (no gradients: larger is faster)
    deterministic: bool = False  # torch.use_deterministic_algorithms; CPU runs are reproducible anyway
    figures: bool = True  # draw the run's figures at its end (and for loggers while it trains)
    pca_baseline: bool = True  # fit PCA with code_dim components on the train split for comparison
    precision: str = choice("fp32", ("fp32", "bf16", "fp16"))  # autocast dtype; fp16 adds a gradient scaler
    compile: bool = False  # torch.compile the model for training
    threads: Optional[int] = number(None, ge=1)  # CPU threads for torch; null keeps torch's default
    # |code| a unit must exceed to count as active (l0, dead/dense units, firing frequency); null: 0, or 0.1
    # for sigmoid/tanh codes, which are never exactly zero
    active_threshold: Optional[float] = number(None, ge=0)
    # Variational models (model=vae): importance samples per validation input behind the run's nll (at its
    # end; autoenc eval takes nll_samples=); 0 skips the ELBO, NLL and active-unit scores
    nll_samples: int = number(100, ge=0)

    def check(self) -> None:
        allowed = ("auto", "cpu", "cuda")
        base, _, index = self.device.partition(":")
        if base not in allowed or (index and (base != "cuda" or not index.isdigit())):
            raise ConfigError("device", self.device, "choose one of auto, cpu, cuda, cuda:N")


# The figures a gallery panel may show: a run's figures/NAME.png (TrainConfig.check: what each needs of the run).
GALLERY_PANELS = (
    "reconstructions",
    "denoising",
    "dictionary",
    "latent_map",
    "latent_scatter",
    "code_density",
    "loss_curve",
    "stages",
    "samples",
    "interpolations",
    "latent_manifold",
)


@dataclass
class GalleryConfig:
    """A run's entry on the gallery page of the sweep (or ``autoenc report``) that holds it: the runs with
    a caption each get a row with their chosen figures, the caption and their measured numbers."""

    caption: Optional[str] = None  # one line: what the figure shows (e.g. the claim of the paper reproduced)
    panels: list[str] = field(default_factory=lambda: ["reconstructions"])  # figures/NAME.png to show

    def check(self) -> None:
        unknown = [panel for panel in self.panels if panel not in GALLERY_PANELS]
        if unknown or not self.panels:
            raise ConfigError("panels", self.panels, f"a non-empty list of {', '.join(GALLERY_PANELS)}")


@dataclass
class TrainConfig:
    seed: int = number(0, ge=0)
    output_root: str = "outputs"
    k: Optional[int] = number(None, ge=1)
    lam: Optional[float] = number(None, ge=0)
    l0: Optional[float] = number(None, gt=0)
    resume: Optional[str] = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    # Filled with registry-typed option configs by ``autoenc_cli.schema.resolve``.
    data: Any = None
    model: Any = None
    loss: Any = None
    optimizer: Any = None
    schedule: Any = None
    sparsity: Any = None  # {option name: its config}, in the order listed (see STACKED_GROUPS)
    noise: Any = None
    augment: Any = None
    logger: Any = None  # {option name: its config}: the experiment trackers, none to several

    def check(self) -> None:
        """A gallery entry must be drawable: never a caption beside figures the run does not make."""
        if self.gallery.caption is None:
            return
        if not self.trainer.figures:
            raise ConfigError(
                "gallery.caption", self.gallery.caption, "needs trainer.figures=true (its panels are figures)"
            )
        needs = {
            "denoising": (self.noise.name != "none", "a noise option (noise=gaussian, mask, ...)"),
            "stages": (self.schedule.name == "greedy", "schedule=greedy"),
            "samples": (self.model.variational, "a variational model (model=vae)"),
            "interpolations": (self.model.variational, "a variational model (model=vae)"),
            "latent_manifold": (
                self.model.variational and self.model.code_dim == 2,
                "a variational model with a 2-D code (model=vae model.code_dim=2)",
            ),
        }
        for panel in self.gallery.panels:
            drawn, what = needs.get(panel, (True, ""))
            if not drawn:
                raise ConfigError("gallery.panels", self.gallery.panels, f"'{panel}' is drawn only with {what}")
