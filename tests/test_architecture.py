"""The structure the code promises: each option defined once, and packages that import one way."""

from __future__ import annotations

import ast
import dataclasses
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


def package_imports() -> dict[str, set[str]]:
    """Which top-level parts of autoenc_cli (sub-packages and modules) each part imports, lazy imports too."""

    def part(module: str) -> str:
        pieces = module.split(".")
        return pieces[1] if len(pieces) > 1 else "__init__"

    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("autoenc_cli.") and part(name) != part(module):
                    edges.setdefault(part(module), set()).add(part(name))
    return edges


def test_packages_import_without_cycles():
    edges = package_imports()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # The components never reach up to the orchestration that uses them.
    for component in ("models", "sparsity", "noise", "data", "losses", "schedules", "schema", "training"):
        assert not edges.get(component, set()) & {"train", "build", "evaluation", "artifacts"}, component
