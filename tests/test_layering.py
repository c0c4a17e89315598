"""The package's shape: no import cycles (imports inside functions count: they hide a cycle, they do not remove
it; `if TYPE_CHECKING:` blocks do not), and the layers' arrows point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import cloudsd

ROOT = Path(cloudsd.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                skip.update(id(sub) for sub in ast.walk(node))
    return skip


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                target = owner(name)
                if target and target != module:
                    edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    modules = {p.stem if p.stem != "__init__" else "": p for p in package.glob("*.py")}
    named = {("pkg." + k).rstrip("."): v for k, v in modules.items()}
    assert cycles(imports(named)) == [["pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(imports(_modules())) == []


def test_layers_point_one_way() -> None:
    edges = imports(_modules())
    for module, targets in edges.items():
        if module.startswith("cloudsd.core"):
            assert not any(t.startswith("cloudsd.cli") for t in targets), f"{module} imports the CLI"
        if module.startswith("cloudsd.providers"):
            assert not any(t.startswith(("cloudsd.core", "cloudsd.cli")) for t in targets), module
        if module == "cloudsd.ledger":
            assert not any(t.startswith(("cloudsd.core", "cloudsd.cli")) for t in targets), module


def test_status_with_no_machines_loads_no_ssh_or_docker_library(tmp_path: Path) -> None:
    """`cloudsd status` on an empty ledger (start-up time counts there): no paramiko or docker."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom cloudsd.cli.main import main\ntry:\n    main(['status'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES=' + ','.join(m for m in ('paramiko', 'docker') if m in sys.modules))\n")
    env = {**os.environ, "CLOUDSD_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.splitlines()[0] == "No machines. Start one with `cloudsd up`."
    assert out.strip().splitlines()[-1] == "MODULES=", json.dumps(out)


def _status_loads(home: Path, modules: tuple[str, ...]) -> tuple[str, set[str]]:
    """What `cloudsd status` prints first, and which of `modules` it imported, run in a fresh interpreter with
    `home` as CLOUDSD_HOME, HOME and XDG_CONFIG_HOME (the tests' environment holds no provider key)."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom cloudsd.cli.main import main\ntry:\n    main(['status'])\nexcept SystemExit:\n    pass\n"
            f"print('MODULES=' + ','.join(m for m in {modules!r} if m in sys.modules))\n")
    env = {**os.environ, "CLOUDSD_HOME": str(home / "cloudsd"), "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    lines = out.strip().splitlines()
    return lines[0], set(filter(None, lines[-1].removeprefix("MODULES=").split(",")))


STATUS_HEAVY = ("httpx", "yaml", "rich", "docker", "paramiko", "importlib.resources", "cloudsd.core.lifecycle",
                "cloudsd.providers.runpod", "cloudsd.providers.vastai", "cloudsd.providers.local")


def test_status_with_no_machines_keys_or_config_loads_no_vendor_module_yaml_or_rich(tmp_path: Path) -> None:
    """No key: the stray sweep learns it from `providers/credentials.py`, without the vendor modules (httpx, and
    rich through it); no config file: no YAML library; no machine: no Docker SDK. A config file still is read."""
    first, loaded = _status_loads(tmp_path, STATUS_HEAVY)
    assert first == "No machines. Start one with `cloudsd up`."
    assert loaded == set()
    (tmp_path / "cloudsd").mkdir(exist_ok=True)
    (tmp_path / "cloudsd" / "config.yaml").write_text("port: 7861\n")
    first, loaded = _status_loads(tmp_path, STATUS_HEAVY)
    assert first == "No machines. Start one with `cloudsd up`." and loaded == {"yaml"}
