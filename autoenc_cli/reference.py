"""The option reference: every config group's options and every command's settings, as markdown.

It is read from the config dataclasses themselves (each field's key, type, default and range or choice rule)
and from the comments on their fields, so it cannot drift from the code: the docs site inserts it into
docs/options.md when it is built (docs/hooks/options.py), and ``python -m autoenc_cli.reference`` prints it.
A field's description is the ``#`` comment on it in its dataclass or, where the dataclass has none, the
comment on the same key in the option's YAML preset (the text ``--help`` prints).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterator, Optional

import yaml

from autoenc_cli.evaluation.commands import HELP, EncodeConfig, EvalConfig, ReconstructConfig
from autoenc_cli.export import ExportConfig
from autoenc_cli.registry import GROUP_PACKAGES, REGISTRY
from autoenc_cli.schema.fields import describe_bounds
from autoenc_cli.schema.resolve import describe_type
from autoenc_cli.schema.root import GROUPS, STACKED_GROUPS, TrainConfig
from autoenc_cli.tuning.settings import TuneConfig

CONFIGS = resources.files("autoenc_cli.configs")
# The commands other than train: each one's settings' schema and its YAML preset (the keys' package).
COMMANDS: dict[str, type] = {
    "tune": TuneConfig,
    "eval": EvalConfig,
    "encode": EncodeConfig,
    "reconstruct": ReconstructConfig,
    "export": ExportConfig,
}
COMMAND_PREFIXES = {"tune": "tune."}  # autoenc tune's own settings sit under tune. (tune.trials=40)
TABLE_HEAD = ["| key | type | default | allowed | what it does |", "| --- | --- | --- | --- | --- |"]


# --- the comments on a dataclass's fields -----------------------------------------------------------------------


def own_field_comments(config_class: type) -> dict[str, str]:
    """The comment of each field that ``config_class`` itself declares: the comment lines right above the
    field, then the ``#`` comment at the end of its line(s), joined."""
    try:
        source = textwrap.dedent(inspect.getsource(config_class))
    except (OSError, TypeError):  # a class made at run time has no source to read
        return {}
    comment_rows, code_rows = comment_and_code_rows(source)
    (class_node,) = ast.parse(source).body
    comments = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        row = node.lineno - 1
        while row in comment_rows and row not in code_rows:
            above.insert(0, comment_rows[row])
            row -= 1
        after = [comment_rows[row] for row in range(node.lineno, node.end_lineno + 1) if row in comment_rows]
        text = " ".join([*above, *after]).strip()
        if text:
            comments[node.target.id] = text
    return comments


def comment_and_code_rows(source: str) -> tuple[dict[int, str], set[int]]:
    """The text of each row's ``#`` comment, and the rows that hold code (a row in both ends in a comment)."""
    comments: dict[int, str] = {}
    code_rows: set[int] = set()
    layout = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in layout:
            code_rows.update(range(token.start[0], token.end[0] + 1))
    return comments, code_rows


def field_comments(config_class: type) -> dict[str, str]:
    """Every field's comment, inherited ones included: a field keeps the comment of the nearest class that
    declares it with one (a subclass that only changes a default keeps its base's comment)."""
    comments: dict[str, str] = {}
    for owner in reversed(config_class.__mro__):
        if dataclasses.is_dataclass(owner):
            comments.update(own_field_comments(owner))
    return comments


# --- the comments on a YAML preset's keys -------------------------------------------------------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- +)?(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """The comment on each key of a YAML file, by dotted key (``probe.steps``): the comment lines right above
    the key, its line's trailing comment, and the comment lines below aligned with that one, which continue
    it. The comment block that opens the file is the file's, not its first key's; a defaults-list entry
    (``- data: null  # ...``) documents its group's key (``data``)."""
    comments: dict[str, str] = {}
    mappings: list[tuple[int, str]] = []  # the open mappings: (indent, key)
    above: list[str] = []
    continued: Optional[tuple[str, int]] = None  # the last key with a trailing comment, and its column
    lines = text.splitlines()
    opening = next((number for number, line in enumerate(lines) if line.strip() and not line.startswith("#")), 0)
    for line in lines[opening:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            said = stripped.lstrip("#").strip()
            if continued and line.index("#") == continued[1]:
                comments[continued[0]] += f" {said}"
            else:
                above.append(said)
            continue
        match = KEY_LINE.match(line)
        if not match:  # a blank line, or an item of a list
            above, continued = [], None
            continue
        indent, key = len(match["indent"]), match["key"]
        while mappings and mappings[-1][0] >= indent:
            mappings.pop()
        in_defaults = bool(match["dash"]) and mappings[-1:] == [(0, "defaults")]
        full_key = key if in_defaults else ".".join([*(name for _, name in mappings), key])
        value, hash_sign, trailing = match["rest"].partition(" #")
        if not value.strip() and not match["dash"]:
            mappings.append((indent, key))
        said = " ".join([*above, trailing.lstrip("#").strip()] if hash_sign else above)
        if said:
            comments[full_key] = said
        continued = (full_key, line.index(" #", match.start("rest")) + 1) if hash_sign else None
        above = []
    return comments


def preset_comments(path: str, package: str) -> dict[str, str]:
    """The comments on a preset's keys (configs/PATH), by the key an override gives (``model.code_dim``):
    under the preset's ``# @package`` (``_global_``: keys as written), else under ``package``."""
    text = CONFIGS.joinpath(path).read_text()
    header = re.search(r"^# @package (\S+)", text, flags=re.M)
    package = header.group(1) if header else package
    prefix = "" if package in ("_global_", "") else f"{package}."
    return {f"{prefix}{key}": comment for key, comment in yaml_comments(text).items()}


def preset_about(path: str) -> str:
    """What a preset says of itself: the comment block that opens it (but its ``# @package`` line); lines
    indented in it (a command to run) as code."""
    said = []
    for line in CONFIGS.joinpath(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#")
        if text.startswith(" @package"):
            continue
        said.append(f"`{' '.join(text.split())}`" if text.startswith("   ") else text.strip())
    return " ".join(said)


# --- one row per key --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str  # as an override names it: model.code_dim, sparsity.topk.k, probe.steps
    type: str
    default: str
    allowed: str
    comment: str

    def markdown(self) -> str:
        cells = [code(self.key), inline(self.type), code(self.default), inline(self.allowed), inline(self.comment)]
        return f"| {' | '.join(cells)} |"


def rows(
    schema: type, prefix: str = "", described: Optional[dict[str, str]] = None, skip: tuple[str, ...] = ()
) -> Iterator[Row]:
    """A row for each field of ``schema`` under ``prefix``; a field that is itself a dataclass, or a list of
    them (model.encoder), is followed by a row for each of its fields (``trainer.epochs``, ``encoder[].kernel``).
    ``described``: the YAML preset's comments by key, for fields whose dataclass has none."""
    comments, described = field_comments(schema), described or {}
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if field.name in skip:
            continue
        annotation, key = hints[field.name], prefix + field.name
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            yield from rows(annotation, f"{key}.", described)
            continue
        comment = comments.get(field.name) or described.get(key, "")
        yield Row(key, type_text(annotation), default_text(field), allowed_text(field), comment)
        item = list_item(annotation)
        if item is not None:
            yield from rows(item, f"{key}[].", described)


def list_item(annotation: Any) -> Optional[type]:
    """The dataclass a ``list[...]`` field holds, or None."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item):
            return item
    return None


def type_text(annotation: Any) -> str:
    """The type in the words of the config check's own errors (``integer or null``)."""
    item = list_item(annotation)
    if item is not None:
        return "a list of mappings (their keys below)"
    return describe_type(annotation) or "any"


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return "required" if value == "???" else flow(value)


def flow(value: Any) -> str:
    """A value as it is written on the command line (YAML flow style): null, true, [10, 100, all]."""
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def plain(value: Any) -> Any:
    """``value`` with its dataclasses as mappings and its tuples as lists, as YAML writes them."""
    if dataclasses.is_dataclass(value):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def allowed_text(field: dataclasses.Field) -> str:
    bounds, choices = field.metadata.get("bounds"), field.metadata.get("choices")
    if bounds:
        return describe_bounds(bounds)
    if choices:
        return ", ".join(choices)
    return ""


# --- markdown -------------------------------------------------------------------------------------------------


def inline(text: str) -> str:
    """Text as it reads, in a paragraph or a table cell: no column breaks, HTML tags or emphasis made of its
    ``|``, ``<`` and ``*`` (a glob), inside its `code spans` or out."""
    pieces = re.split(r"(`[^`]*`)", text)
    return "".join(code(piece[1:-1]) if piece.startswith("`") else escaped(piece) for piece in pieces)


def escaped(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def code(text: str) -> str:
    """A code span that a table cell cannot split (a ``|`` in it is written as its HTML entity)."""
    return f"`{text}`" if text and "|" not in text else (f"<code>{html_text(text)}</code>" if text else "")


def html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")


def table(found: Iterator[Row]) -> list[str]:
    lines = [row.markdown() for row in found]
    return [*TABLE_HEAD, *lines] if lines else ["No settings."]


def first_paragraph(text: Optional[str]) -> str:
    """A docstring's first paragraph on one line, its ``double backticks`` as markdown's single ones."""
    paragraph = inspect.cleandoc(text or "").split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "`")


def written_docstring(config_class: type) -> str:
    """The class's own docstring; not the signature that @dataclass writes in when there is none."""
    doc = config_class.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{config_class.__name__}(") else first_paragraph(doc)


def train_defaults() -> dict[str, Optional[str]]:
    """Each group's default option, from the defaults list of configs/train.yaml."""
    found: dict[str, Optional[str]] = {}
    for entry in yaml.safe_load(CONFIGS.joinpath("train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            found[key] = value
    return found


# --- the sections -------------------------------------------------------------------------------------------------


def top_level_section() -> list[str]:
    described = {**preset_comments("train.yaml", ""), **preset_comments("trainer/default.yaml", "trainer")}
    return [
        "## autoenc train",
        "",
        "The run's own settings (`seed=1`, `trainer.epochs=5`); each config group below is selected with "
        "`GROUP=NAME` and set with `GROUP.KEY=VALUE`.",
        "",
        *table(rows(TrainConfig, "", described, skip=GROUPS)),
        "",
    ]


def group_section(group: str, default: Optional[str]) -> list[str]:
    several = group in STACKED_GROUPS
    how = (
        f"Select one with `{group}=NAME`, several with `{group}=[A,B]`; each option's settings sit under its name "
        f"(`{group}.NAME.KEY=VALUE`)."
        if several
        else f"Select one with `{group}=NAME`; its settings are `{group}.KEY=VALUE`."
    )
    about = first_paragraph(importlib.import_module(GROUP_PACKAGES[group]).__doc__)
    lines = [f"## {group}", "", inline(about), "", f"{how} Default: `{default}`.", ""]
    for name in REGISTRY.names(group):
        entry = REGISTRY.entry(group, name)
        preset = f"{group}/{name}.yaml"
        prefix = f"{group}.{name}." if several else f"{group}."
        said = [written_docstring(entry.config_class), first_paragraph(entry.component.__doc__)]
        about = " ".join(filter(None, said)) or preset_about(preset)
        described = preset_comments(preset, prefix.removesuffix("."))
        lines += [f"### {group}={name}", "", inline(about), ""]
        lines += [*table(rows(entry.config_class, prefix, described, skip=("name",))), ""]
    return lines


def experiment_section() -> list[str]:
    """The presets of the experiment group (YAML only: each sets options of other groups)."""
    lines = [
        "## experiment",
        "",
        "Presets that set several groups at once: `experiment=NAME` (a sweep over some: "
        "`-m 'experiment=glob(sparse_*)'`). Each is a YAML file in configs/experiment/; what it says of itself:",
        "",
        "| preset | what it is |",
        "| --- | --- |",
    ]
    for preset in sorted(CONFIGS.joinpath("experiment").iterdir(), key=lambda entry: entry.name):
        if preset.name.endswith(".yaml"):
            name = preset.name.removesuffix(".yaml")
            lines.append(f"| {code(name)} | {inline(preset_about(f'experiment/{preset.name}'))} |")
    return [*lines, ""]


def command_section(command: str, schema: type) -> list[str]:
    prefix = COMMAND_PREFIXES.get(command, "")
    described = preset_comments(f"{command}.yaml", "")
    synopsis = [f"Usage: {code(HELP[command])}", ""] if command in HELP else []
    about = written_docstring(schema) or preset_about(f"{command}.yaml")
    return [f"## autoenc {command}", "", inline(about), "", *synopsis, *table(rows(schema, prefix, described)), ""]


def options_reference() -> str:
    """The whole reference, as the markdown of docs/options.md below its introduction."""
    defaults = train_defaults()
    lines = top_level_section()
    for group in REGISTRY.groups():
        lines += group_section(group, defaults.get(group))
    lines += experiment_section()
    for command, schema in COMMANDS.items():
        lines += command_section(command, schema)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


if __name__ == "__main__":
    print(options_reference())
