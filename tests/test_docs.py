"""The documentation site (mkdocs.yml, docs/) builds with warnings as errors, and its option reference, generated
from the config dataclasses (autoenc_cli/reference.py), lists every option and every setting.

Every ``autoenc`` command the pages show is run by tests/test_documented_commands.py.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoenc_cli.reference import COMMAND_PREFIXES, COMMANDS, Row, field_comments, rows, yaml_comments
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema import choice, number
from autoenc_cli.schema.root import STACKED_GROUPS, TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` (a warning fails the build) of ``config`` into ``site``."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    command += ["--site-dir", str(site)]
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    return subprocess.run(command, cwd=config.parent, env=environment, capture_output=True, text=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = build(ROOT / "mkdocs.yml", site)
    assert built.returncode == 0, built.stderr[-3000:]
    return site


def page_text(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text()


def readable(page: str) -> str:
    """A page's text as a reader sees it (highlighted code is split into spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def headings(page: str, level: int) -> list[str]:
    found = re.findall(rf"<h{level} id=\"[^\"]*\">(.*?)<a class=\"headerlink\"", page)
    return [readable(text).strip() for text in found]


def table_keys(page: str) -> set[str]:
    """The first cell of every table row: the keys of the option reference."""
    return {html.unescape(key) for key in re.findall(r"<tr>\s*<td><code>(.*?)</code></td>", page)}


def test_every_page_of_docs_is_built(site):
    pages = sorted(path.relative_to(DOCS).with_suffix("") for path in DOCS.glob("*.md"))
    assert len(pages) >= 15, pages
    for page in pages:
        built = site / "index.html" if page.name == "index" else site / page / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"
    for asset in ("gallery/gallery.html", "reproductions/hinton2006_stages.png"):  # copied as they are
        assert (site / asset).is_file(), asset


def test_the_option_reference_has_a_section_for_every_registered_option(site):
    page = page_text(site, "options")
    expected = {f"{group}={name}" for group in REGISTRY.groups() for name in REGISTRY.names(group)}
    assert set(headings(page, 3)) == expected
    assert {"autoenc train", *REGISTRY.groups(), "experiment"} | {f"autoenc {command}" for command in COMMANDS} == set(
        headings(page, 2)
    )


def test_the_option_reference_lists_every_setting(site):
    keys = table_keys(page_text(site, "options"))
    expected = {f"trainer.{setting.name}" for setting in dataclasses.fields(TrainerConfig)}
    for group in REGISTRY.groups():
        for name in REGISTRY.names(group):
            prefix = f"{group}.{name}." if group in STACKED_GROUPS else f"{group}."
            settings = dataclasses.fields(REGISTRY.config_class(group, name))
            expected |= {prefix + setting.name for setting in settings if setting.name != "name"}
    for command, schema in COMMANDS.items():
        prefix = COMMAND_PREFIXES.get(command, "")
        expected |= {prefix + setting.name for setting in dataclasses.fields(schema) if setting.name != "probe"}
    expected |= {"probe.labels_per_class", "probe.steps", "sparsity.topk.k", "model.encoder[].kernel", "seed"}
    assert expected <= keys, sorted(expected - keys)


def test_the_site_shows_the_readmes_set_up_and_results(site):
    index, results = page_text(site, "."), page_text(site, "reproductions")
    assert "python -m pip install -e . -c requirements/constraints.txt && autoenc train" in readable(index)
    assert "Hinton & Salakhutdinov, Science 2006" in readable(results)
    # README's links into docs/, made relative to the page: each leads to its file
    for link in ("hinton2006_stages.png", "../gallery/gallery/00_tutorial_2d_latent_scatter.png"):
        assert f'href="{link}"' in results and (site / "reproductions" / link).is_file(), link


def test_a_broken_link_fails_the_build(tmp_path):
    """--strict makes MkDocs's warnings errors: an anchor no page has stops the build, naming it."""
    shutil.copytree(DOCS, tmp_path / "docs")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    with open(tmp_path / "docs" / "sweeps.md", "a") as page:
        page.write("\nSee [the stacks](stacking.md#no-such-section).\n")
    built = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 1
    assert (
        "WARNING -  Doc file 'sweeps.md' contains a link 'stacking.md#no-such-section', but the doc 'stacking.md' "
        "does not contain an anchor '#no-such-section'." in built.stderr
    )
    assert "Aborted with 1 warnings in strict mode!" in built.stdout


def test_a_page_that_includes_a_missing_readme_section_is_an_error():
    spec = importlib.util.spec_from_file_location("generated", DOCS / "hooks" / "generated.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    with pytest.raises(ValueError, match=r"README.md has no '## Results' section, which a page of docs/ includes"):
        hook.on_page_markdown("<!-- from README.md: Results -->", None, None, None)


# --- where the descriptions come from ---------------------------------------------------------------------------


@dataclass
class Inner:
    size: int = 4  # how big


@dataclass
class BaseKnobs:
    # the width of
    # each layer
    width: int = number(8, ge=1)
    depth: int = 2  # how many layers

    plain: bool = False


@dataclass
class DerivedKnobs(BaseKnobs):
    depth: int = 3
    mode: str = choice("a", ("a", "b"))  # one of two
    inner: Inner = field(default_factory=Inner)
    layers: list[Inner] = field(default_factory=lambda: [Inner(2)])
    # not the comment of a field


def test_a_fields_comment_is_the_comment_above_it_or_on_its_line_and_is_inherited():
    assert field_comments(DerivedKnobs) == {
        "width": "the width of each layer",
        "depth": "how many layers",
        "mode": "one of two",
    }
    assert field_comments(BaseKnobs) == {"width": "the width of each layer", "depth": "how many layers"}


def test_rows_give_each_key_its_type_default_rule_and_comment():
    assert list(rows(DerivedKnobs, "x.", {"x.plain": "from the YAML", "x.depth": "not used: the class says"})) == [
        Row("x.width", "integer", "8", ">= 1", "the width of each layer"),
        Row("x.depth", "integer", "3", "", "how many layers"),
        Row("x.plain", "boolean (true or false)", "false", "", "from the YAML"),
        Row("x.mode", "string", "a", "a, b", "one of two"),
        Row("x.inner.size", "integer", "4", "", "how big"),
        Row("x.layers", "a list of mappings (their keys below)", "[{size: 2}]", "", ""),
        Row("x.layers[].size", "integer", "4", "", "how big"),
    ]


def test_yaml_comments_by_dotted_key():
    text = """# the file's own opening comment, not its first key's
defaults:
  - data: null          # another data set
  - _self_

run: ???                # the run folder
out: ???                # where to write:
                        # a new file
probe:
  # how many labels
  labels: [10]
  steps: 100
"""
    assert yaml_comments(text) == {
        "data": "another data set",
        "run": "the run folder",
        "out": "where to write: a new file",
        "probe.labels": "how many labels",
    }


def test_every_setting_in_the_option_reference_says_what_it_does():
    """Every key of every option and command is documented (a ``#`` comment on its dataclass field, or on
    the key in its YAML preset): a reference row without a description is a field someone must document."""
    from autoenc_cli.reference import options_reference

    table_rows = [line for line in options_reference().splitlines() if line.startswith("| `")]
    described = {cells[1].strip(): cells[-2].strip() for cells in (line.split("|") for line in table_rows)}
    assert len(table_rows) > 200 and [key for key, text in described.items() if not text] == []
