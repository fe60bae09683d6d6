"""No code runs from data, no shell, nothing listens beyond localhost by default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Calls that run code from data or through a shell.
FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "os.popen",
    "os.system",
    "pickle.load",
    "pickle.loads",
    "torch.load",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "marshal.loads",
    "shelve.open",
}


def python_sources() -> list[Path]:
    folders = ("unet", "flows", "benchmarks", "scripts")
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def test_source_has_no_shell_pickle_or_unsafe_yaml():
    assert len(python_sources()) > 20
    found = []
    for path in python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                name = dotted(node.func)
                if name in FORBIDDEN_CALLS:
                    found.append(f"{where} calls {name}")
                for keyword in node.keywords:
                    shell = keyword.arg == "shell" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                    )
                    if shell:
                        found.append(f"{where} passes shell=")
            elif isinstance(node, ast.ImportFrom) and node.module in ("pickle", "marshal", "os"):
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                found += [f"{where} imports {name}" for name in names & FORBIDDEN_CALLS]
    assert found == []


def test_yaml_with_a_python_tag_is_refused_without_running_it(tmp_path):
    from flows.pipelines import load_pipelines
    from unet.errors import ConfigError

    marker = tmp_path / "ran"
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "deployments:\n"
        f"  - !!python/object/apply:os.system ['touch {marker}']\n"
        "  - name: x\n"
        "    flow: segment_image\n"
        "    parameters: {input: a.zarr, output: b.zarr}\n"
    )
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_pipelines(config)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_prefect_server_defaults_to_localhost():
    """The server `prefect server start` and the ephemeral mode start, unless told otherwise."""
    from prefect.settings import PREFECT_SERVER_API_HOST

    from flows.settings import DEFAULTS

    assert PREFECT_SERVER_API_HOST.default() == "127.0.0.1"
    assert "PREFECT_SERVER_API_HOST" not in DEFAULTS  # the project does not widen it


def test_compose_publishes_ports_on_localhost_only():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = [
        str(port) for service in compose["services"].values() for port in service.get("ports", [])
    ]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports), ports
