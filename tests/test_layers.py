"""The package's layers, as the README's "Architecture" section draws them: each layer imports
only from the layers below it, and only the CLI and flows/ import Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Bottom to top. A module may import from its own layer and from any layer to its left.
LAYERS = [
    "base",  # unet.errors, unet.config, unet.sizes
    "tiling",
    "io",
    "network",
    "predict",
    "engine",
    "results",
    "training",
    "api",  # unet (the package's public names), unet.runs, unet.bench
    "flows",
    "cli",  # unet.cli, unet.options
]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if parts[0] != "unet":
        return None
    if len(parts) == 1 or parts[1] in ("runs", "bench"):
        return "api"
    if parts[1] in ("errors", "config", "sizes"):
        return "base"
    if parts[1] in ("cli", "options"):
        return "cli"
    return parts[1]


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import in unet/ and flows/, at any depth."""
    found = []
    for package in ("unet", "flows"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.append((module, node.module))
                elif isinstance(node, ast.Import):
                    found.extend((module, alias.name) for alias in node.names)
    return found


def test_every_module_has_a_layer():
    modules = {module for module, _ in imports()}
    assert all(layer_of(module) in LAYERS for module in modules), sorted(
        m for m in modules if layer_of(m) not in LAYERS
    )


def test_each_layer_imports_only_from_the_layers_below_it():
    upward = [
        f"{module} imports {target}"
        for module, target in imports()
        if layer_of(target) is not None
        and LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))
    ]
    assert not upward, upward


def test_only_the_cli_and_flows_import_prefect():
    leaks = [
        module
        for module, target in imports()
        if target.split(".")[0] in ("prefect", "flows") and layer_of(module) not in ("flows", "cli")
    ]
    assert not leaks, leaks
