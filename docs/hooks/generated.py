"""MkDocs hook (mkdocs.yml names it): the parts of the docs site that are generated, not written here.

- docs/options.md's marker becomes the option reference, read from the config dataclasses
  (``autoenc_cli.reference.options_reference``), so it cannot drift from the code;
- a ``<!-- from README.md: TITLE -->`` marker becomes the body of README.md's "## TITLE" section (the set-up
  commands, the reproductions table), which the README owns as the front page, so the two never disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

from autoenc_cli.reference import options_reference

OPTIONS = "<!-- generated: the option reference -->"
FROM_README = re.compile(r"<!-- from README\.md: (.+?) -->")
README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = markdown.replace(OPTIONS, options_reference()) if OPTIONS in markdown else markdown
    return FROM_README.sub(lambda marker: readme_section(marker.group(1)), markdown)


def readme_section(title: str) -> str:
    """The body of README.md's "## TITLE", its links into docs/ made relative to docs/, as the pages are."""
    _, found, rest = README.read_text().partition(f"\n## {title}\n")
    if not found:
        raise ValueError(f"README.md has no '## {title}' section, which a page of docs/ includes")
    return rest.split("\n## ", 1)[0].strip().replace("](docs/", "](")
