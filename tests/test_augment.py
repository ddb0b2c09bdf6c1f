"""augment=flip_shift: exact mirror images and translations, drawn per image from the run's generator, and
checked against the data's shape. (An augmented run resumes exactly: test_resume.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from autoenc_cli.augment.flip_shift import PAD_MODES, FlipShiftConfig
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema.resolve import typed_config, with_former_values

from conftest import SAMPLE_VECTORS, TINY, compose_config, run_main


def augmentation(**settings):
    return REGISTRY.build(FlipShiftConfig(**settings))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_one_mirrors_every_image_and_flip_zero_none():
    batch = torch.rand(6, 3, 5, 7)
    assert torch.equal(augmentation(flip=1.0, shift=0)(batch, seeded()), batch.flip(-1))
    assert torch.equal(augmentation(flip=0.0, shift=0)(batch, seeded()), batch)


def test_flips_are_drawn_per_image_at_the_given_rate():
    batch = torch.rand(400, 1, 4, 4)
    out = augmentation(flip=0.25, shift=0)(batch, seeded())
    mirrored = (out == batch.flip(-1)).flatten(1).all(1)
    assert ((out == batch).flatten(1).all(1) ^ mirrored).all()  # each image is itself or its mirror image
    assert 70 <= int(mirrored.sum()) <= 130  # 100 expected


@pytest.mark.parametrize("padding", list(PAD_MODES))
def test_each_image_moves_by_its_own_offset_with_the_padding_asked_for(padding):
    batch, reach = torch.rand(64, 2, 6, 5), 2
    out = augmentation(flip=0.0, shift=reach, padding=padding)(batch, seeded())
    padded = F.pad(batch, (reach,) * 4, mode=PAD_MODES[padding])
    offsets = [(dy, dx) for dy in range(2 * reach + 1) for dx in range(2 * reach + 1)]
    moved = torch.stack([padded[:, :, dy : dy + 6, dx : dx + 5] for dy, dx in offsets], 1)  # every translation
    matches = (moved == out[:, None]).flatten(2).all(2)  # (image, offset)
    assert matches.any(1).all()  # every output is one translation of its own image
    assert len(matches.float().argmax(1).unique()) >= 15  # of the 25 offsets: drawn per image, not per batch
    if padding == "zeros":
        assert matches[:, offsets.index((reach, reach))].float().mean() < 0.2  # most images do move


def test_the_same_generator_state_gives_the_same_batch():
    batch, transform = torch.rand(32, 3, 8, 8), augmentation()
    assert torch.equal(transform(batch, seeded(3)), transform(batch, seeded(3)))
    assert not torch.equal(transform(batch, seeded(3)), transform(batch, seeded(4)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=vectors", f"data.path={SAMPLE_VECTORS}"], "augment.name='flip_shift' is not allowed: transforms C x H"),
        (["augment.shift=28"], "augment.shift=28 is not allowed: must be below the images' smallest side (28)"),
        (["augment.shift=30", "augment.padding=zeros"], "augment.shift=30 is not allowed: must be below"),
    ],
    ids=["vectors", "shift-too-far", "shift-past-the-image"],
)
def test_an_augmentation_the_data_cannot_take_is_a_one_line_error(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY, "augment=flip_shift", *overrides]) != 0
    assert message in capsys.readouterr().err and not (tmp_path / "outputs").exists()


def test_a_run_saved_before_the_augment_group_loads_as_unaugmented():
    saved = OmegaConf.to_container(compose_config())  # plain data, as a run's saved config is
    del saved["augment"]
    assert typed_config(saved, saved=True).augment.name == "none"
    assert with_former_values(saved).augment.name == "none"  # and resumes so


def test_training_batches_go_through_the_augmentation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = [*TINY, "trainer.figures=false", "trainer.pca_baseline=false"]
    histories = {}
    for name, extra in {"plain": [], "mirrored": ["augment=flip_shift", "augment.flip=1", "augment.shift=0"]}.items():
        assert run_main(["train", *quick, *extra, f"output_root={name}"]) == 0
        (run,) = (tmp_path / name / "runs").iterdir()
        histories[name] = [line.split(",")[2:4] for line in (run / "history.csv").read_text().splitlines()[1:]]
    # The same seed, so the same first batches: only the mirrored inputs change the training loss.
    assert histories["plain"][0][0] != histories["mirrored"][0][0]
