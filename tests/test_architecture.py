"""The structure the code promises: each option defined once, and packages that import one way."""

from __future__ import annotations

import ast
import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema.root import GROUPS, STACKED_GROUPS, TrainConfig, TrainerConfig

CONFIGS = resources.files("autoenc_cli.configs")
PACKAGE = Path(__file__).resolve().parents[1] / "autoenc_cli"


def option_files() -> list[tuple[str, str]]:
    return [
        (group, entry.name)
        for group in GROUPS
        for entry in sorted((CONFIGS / group).iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".yaml")
    ]


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=False)


@pytest.mark.parametrize(("group", "file"), option_files(), ids=lambda value: str(value))
def test_every_yaml_option_lists_exactly_its_dataclass_defaults(group, file):
    text = (CONFIGS / group / file).read_text()
    node = OmegaConf.create(text)
    if "@package _global_" in text:  # a preset that also sets other groups (kl sets a sigmoid code)
        node = node[group]
    if group in STACKED_GROUPS:  # members live under their name: sparsity.topk.k (the name is the key)
        if not node:
            assert file == "none.yaml", f"{group}/{file} selects nothing"
            return
        ((name, node),) = node.items() if "@package _global_" in text else [(file.removesuffix(".yaml"), node)]
        assert f"@package {group}.{name}" in text or "@package _global_" in text, f"{group}/{file} package header"
        node = OmegaConf.merge({"name": name}, node)
    config_class = REGISTRY.config_class(group, node.name)
    defaults = OmegaConf.structured(config_class)
    assert set(node.keys()) == set(defaults.keys()), f"{group}/{file} should list every knob of {config_class.__name__}"
    merged = OmegaConf.merge(defaults, node)  # nested specs (conv blocks) get their own defaults filled in
    assert plain(merged) == plain(defaults), f"{group}/{file} disagrees with {config_class.__name__}"


@pytest.mark.parametrize(
    ("file", "schema", "key"), [("train.yaml", TrainConfig, None), ("trainer/default.yaml", TrainerConfig, None)]
)
def test_top_level_yaml_matches_its_schema(file, schema, key):
    node = OmegaConf.create((CONFIGS / file).read_text())
    defaults = OmegaConf.structured(schema)
    scalar_fields = {f.name for f in dataclasses.fields(schema) if f.name not in GROUPS and f.name != "trainer"}
    assert scalar_fields <= set(node.keys())
    for name in scalar_fields:
        assert node[name] == defaults[name], f"{file}: {name}"


ROOTS = (PACKAGE, PACKAGE.parent / "hydra_plugins")  # the runtime code: autoenc_cli and its Hydra plugin


def module_imports() -> dict[str, set[str]]:
    """Which module of autoenc_cli and hydra_plugins imports which, lazy imports (inside functions) too;
    imports only a type checker runs (``if TYPE_CHECKING:``) are not run, so they cannot close a circle."""
    paths = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for root in ROOTS
        for path in root.rglob("*.py")
    }
    edges: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        tree = ast.parse(path.read_text())
        type_checking = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            edges[module] |= {name for name in names if name in paths and name != module}
    return edges


def package_imports() -> dict[str, set[str]]:
    """Which top-level parts (autoenc_cli's sub-packages and modules, the Hydra plugin) each part imports."""

    def part(module: str) -> str:
        pieces = module.split(".")
        return pieces[0] if pieces[0] != "autoenc_cli" else pieces[1] if len(pieces) > 1 else "__init__"

    edges: dict[str, set[str]] = {}
    for module, targets in module_imports().items():
        for target in targets:
            if part(target) != part(module):
                edges.setdefault(part(module), set()).add(part(target))
    return edges


def first_circle(edges: dict[str, set[str]]) -> list[str]:
    """An import circle in ``edges`` (``[a, b, a]``), or [] when there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (circle := visit(target, [*path, target])):
                return circle
        state[node] = "done"
        return []

    for node in sorted(edges):
        if node not in state and (circle := visit(node, [node])):
            return circle
    return []


def test_modules_and_packages_import_without_circles():
    """No module imports one that imports it back, however far round, the Hydra plugin included."""
    assert first_circle(module_imports()) == []
    assert first_circle(package_imports()) == []
    assert first_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_the_layers_import_downwards():
    edges = package_imports()
    # The components never reach up to the orchestration that uses them.
    for component in ("models", "sparsity", "noise", "augment", "data", "losses", "schedules", "schema", "training"):
        assert not edges.get(component, set()) & {"train", "build", "evaluation", "artifacts"}, component


LAYOUT_MODULE = PACKAGE / "folder_layout.py"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "hydra_plugins").rglob("*.py")])


def layout_names() -> set[str]:
    """Every file and folder name the layout module defines (its upper-case constants, and each part of
    the paths among them: checkpoints/last.pt gives checkpoints and last.pt)."""
    from autoenc_cli import folder_layout

    values = [value for name, value in vars(folder_layout).items() if name.isupper()]
    strings = [item for value in values for item in (value if isinstance(value, (tuple, frozenset)) else [value])]
    assert strings and all(isinstance(item, str) for item in strings)
    return {part for item in strings for part in (item, *item.split("/"))}


def spelled_names(path: Path, names: set[str]) -> list[str]:
    """``file:line: 'string'`` for each string in ``path`` that spells a layout name: a file name (or
    .hydra) anywhere in it; a bare folder name as part of a path (figures/..., RUN_DIR/checkpoints) or joined
    into one (``run_dir / "checkpoints"``), not as a word (the figures, trainer.figures, best/mse). A tracker
    names its own files (RUN_DIR/tensorboard is logger=tensorboard's).
    Docstrings (and any statement that is only a string) are documentation, not names the code uses."""
    from autoenc_cli.folder_layout import checkpoint_file

    files = sorted((name for name in names if "." in name or "/" in name), key=len, reverse=True)
    # A bare name is a folder's, unless it names a checkpoint (best: checkpoints/best.pt), which is no path.
    folders = sorted((n for n in names if n not in files and checkpoint_file(n) not in names), key=len, reverse=True)
    file_pattern = re.compile(rf"(?<![\w.])(?:{'|'.join(map(re.escape, files))})(?!\w)")
    either = "|".join(map(re.escape, folders))
    folder_pattern = re.compile(rf"(?<![\w.])(?:{either})/|/(?:{either})(?![\w.])")
    tree = ast.parse(path.read_text())
    documentation = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    joined = {
        id(operand)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for operand in (node.left, node.right)
    }
    strings = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation
    ]
    shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
    return [
        f"{shown}:{node.lineno}: {node.value!r}"
        for node in sorted(strings, key=lambda node: (node.lineno, node.col_offset))
        if file_pattern.search(node.value)
        or folder_pattern.search(node.value)
        or (id(node) in joined and node.value in folders)
    ]


def test_only_the_layout_module_spells_folder_file_names():
    """One module names every file of a run, sweep, study and export folder (autoenc_cli.folder_layout);
    the others take the names from it, so a file is renamed in one place."""
    names = layout_names()
    found = [line for path in SOURCES if path != LAYOUT_MODULE for line in spelled_names(path, names)]
    assert not found, "spell these with autoenc_cli.folder_layout:\n" + "\n".join(found)


def test_the_layout_check_finds_a_planted_name(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""A docstring may say run.json."""\n'
        'a = run_dir / "checkpoints" / f"{name}.pt"\n'
        'b = f"see {run_dir}/metrics.json"\n'
        'c = ["figures", "trainer.figures", "logger=wandb", "the figures", "stage1.pth", "a.run.json", "best/mse"]\n'
        'd = "keep figures/frontier.png", "RUN_DIR/checkpoints", "RUN_DIR/tensorboard"\n'
    )
    assert spelled_names(planted, layout_names()) == [
        "planted.py:2: 'checkpoints'",
        "planted.py:2: '.pt'",
        "planted.py:3: '/metrics.json'",
        "planted.py:5: 'keep figures/frontier.png'",
        "planted.py:5: 'RUN_DIR/checkpoints'",
    ]
