"""The gallery (issue 15): presets that carry a caption, and the page a sweep of them ends in."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autoenc_cli.errors import ConfigError
from autoenc_cli.schema.resolve import resolve
from autoenc_cli.schema.root import GALLERY_PANELS

from conftest import TINY, compose_config, run_main
from test_config import group_options

TUTORIAL = [name for name in group_options("experiment") if name.startswith("tutorial_")]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_every_tutorial_figure_has_a_preset_with_a_caption():
    # The source tutorial's figures: simple, top-k 16/5, KL 1e-2/1e-1, lifetime 25%/5%, conv, 2-D, 2 denoisers.
    assert len(TUTORIAL) == 11
    runs = {name: resolve(compose_config([f"experiment={name}"])) for name in TUTORIAL}
    assert all(run.gallery.caption and set(run.gallery.panels) <= set(GALLERY_PANELS) for run in runs.values())
    assert runs["tutorial_2d"].model.code_dim == 2 and [layer.width for layer in runs["tutorial_2d"].model.encoder] == [
        128,
        64,
        32,
    ]
    assert runs["tutorial_conv"].model.name == "conv" and runs["tutorial_conv"].model.pool == 2
    assert (runs["tutorial_denoise_mask"].noise.name, runs["tutorial_denoise_mask"].noise.rate) == ("mask", 0.5)
    assert runs["tutorial_denoise_gaussian"].noise.name == "gaussian"
    assert runs["tutorial_fc"].model.code_dim == 64 and runs["tutorial_fc"].model.code_activation == "leaky_relu"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["gallery.panels=[dictionary,bogus]"],
            "gallery.panels=['dictionary', 'bogus'] is not allowed: a non-empty list",
        ),
        (["gallery.panels=[]"], "gallery.panels=[] is not allowed"),
        (
            ["gallery.caption=x", "trainer.figures=false"],
            "gallery.caption='x' is not allowed: needs trainer.figures=true",
        ),
        (["gallery.caption=x", "gallery.panels=[denoising]"], "'denoising' is drawn only with a noise option"),
        (["gallery.caption=x", "gallery.panels=[stages]"], "'stages' is drawn only with schedule=greedy"),
    ],
)
def test_a_gallery_entry_that_cannot_be_drawn_is_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        resolve(compose_config(overrides))
    assert message in str(error.value)


def test_a_sweep_of_captioned_runs_ends_in_a_gallery_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = ["train", "-m", *TINY, "trainer.epochs=1", "experiment=tutorial_topk_5,tutorial_denoise_mask,smoke"]
    assert run_main([*sweep, "data.batch_size=64", "hydra.sweep.dir=sweep"]) == 0
    assert f"gallery: {Path('sweep') / 'gallery.html'}" in capsys.readouterr().out
    page = (tmp_path / "sweep" / "gallery.html").read_text()
    # The two captioned runs get a row each, in sweep order; the preset without a caption (smoke) none.
    assert page.index("Top-k 5: 5 units per digit") < page.index("Denoising, masking noise at 50%")
    assert "autoenc gallery: 2 runs, 3 panels" in page and "smoke" not in page
    links = Links()
    links.feed(page)
    # The panels are copies of the runs' figures in gallery/, so the page stands alone.
    assert links.images == [
        "gallery/00_tutorial_topk_5_latent_map.png",
        "gallery/00_tutorial_topk_5_dictionary.png",
        "gallery/01_tutorial_denoise_mask_denoising.png",
    ]
    originals = ["0/figures/latent_map.png", "0/figures/dictionary.png", "1/figures/denoising.png"]
    for image, original in zip(links.images, originals):
        assert (tmp_path / "sweep" / image).read_bytes() == (tmp_path / "sweep" / original).read_bytes()
    # The numbers are the runs' own: l0 5.0 for top-k 5, PSNR before and after for the denoiser.
    rows = re.findall(r'<p class="numbers">([^<]*)</p>', page)
    assert "l0 5.0" in rows[0] and "PCA with l0 components" in rows[0] and "PSNR noisy input" not in rows[0]
    assert "PSNR noisy input" in rows[1] and "PSNR denoised" in rows[1]
    # autoenc report rebuilds it; a report of runs with no caption leaves no gallery behind.
    (tmp_path / "sweep" / "gallery.html").unlink()
    assert run_main(["report", "sweep"]) == 0 and (tmp_path / "sweep" / "gallery.html").is_file()
    assert run_main(["report", "sweep/2", "--out", "sweep"]) == 0
    assert not (tmp_path / "sweep" / "gallery.html").exists() and not any((tmp_path / "sweep" / "gallery").iterdir())
