"""The folder tree is the architecture: each layer imports only the layers below it.

    hivemind_nodepool.proto      generated stubs
    hivemind_nodepool.protocol   what everyone shares (states, manifests, bundles, errors, ...)
    hivemind_nodepool.client     the one client library         hivemind_nodepool.pool   the server
    hivemind_nodepool.cli, hivemind_worker, hivemind_jupyter    entry points and the other parts

The worker and the Jupyter side reach the pool over gRPC only: they never import its internals, the
CLIs, or each other. Lazy imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "hivemind_nodepool": ROOT / "server" / "hivemind_nodepool",
    "hivemind_worker": ROOT / "worker" / "hivemind_worker",
    "hivemind_jupyter": ROOT / "hivemind_jupyter",
}
# The layer a module belongs to, by the longest matching prefix.
LAYERS = {
    "hivemind_nodepool": "nodepool-root",
    "hivemind_nodepool.proto": "proto",
    "hivemind_nodepool.protocol": "protocol",
    "hivemind_nodepool.client": "client",
    "hivemind_nodepool.pool": "pool",
    "hivemind_nodepool.cli": "cli",
    "hivemind_worker": "worker",
    "hivemind_jupyter": "jupyter",
}
ALLOWED = {
    "nodepool-root": set(),
    "proto": {"proto"},
    "protocol": {"nodepool-root", "proto", "protocol"},
    "client": {"nodepool-root", "proto", "protocol", "client"},
    "pool": {"nodepool-root", "proto", "protocol", "pool"},
    "cli": {"nodepool-root", "proto", "protocol", "client", "pool", "cli"},
    "worker": {"nodepool-root", "proto", "protocol", "client", "worker"},
    "jupyter": {"nodepool-root", "proto", "protocol", "client", "jupyter"},
}


def layer_of(module: str) -> str | None:
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return LAYERS[best] if best else None


def module_name(package: str, path: Path) -> str:
    parts = list(path.relative_to(SOURCES[package]).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(module: str, path: Path) -> set[str]:
    """Every module that `path` imports, relative imports resolved, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import submodule` imports the submodule
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def all_modules() -> list[tuple[str, Path]]:
    modules = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            if "labextension" in path.parts:
                continue
            modules.append((module_name(package, path), path))
    return modules


def test_every_module_belongs_to_a_layer() -> None:
    for module, _ in all_modules():
        assert layer_of(module) is not None, module


def test_no_module_imports_a_layer_above_it() -> None:
    broken = []
    for module, path in all_modules():
        own = layer_of(module)
        assert own is not None
        for imported in imports_of(module, path):
            other = layer_of(imported)
            if other is not None and other not in ALLOWED[own]:
                broken.append(f"{module} ({own}) imports {imported} ({other})")
    assert not broken, "imports across the layering:\n" + "\n".join(broken)


def test_the_layers_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for module, path in all_modules():
        own = layer_of(module)
        assert own is not None
        for imported in imports_of(module, path):
            other = layer_of(imported)
            if other is not None and other != own:
                edges.setdefault(own, set()).add(other)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [f"{a} <-> {b}" for a, targets in edges.items() for b in targets if reaches(b, a, {b})]
    assert not cycles, f"layers that import each other: {cycles}"


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself: a worker module importing the scheduler is reported."""
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from hivemind_nodepool.pool.scheduler import Scheduler\n")
    imported = imports_of("hivemind_worker.bad", fake)
    assert "hivemind_nodepool.pool.scheduler" in imported
    assert layer_of("hivemind_nodepool.pool.scheduler") not in ALLOWED["worker"]


@pytest.mark.parametrize(
    ("entry", "forbidden"),
    [
        ("hivemind_worker.cli", ("hivemind_nodepool.pool", "hivemind_nodepool.cli", "hivemind_jupyter")),
        ("hivemind_worker.daemon", ("hivemind_nodepool.pool", "hivemind_nodepool.cli", "hivemind_jupyter")),
        ("hivemind_jupyter.magics", ("hivemind_nodepool.pool", "hivemind_nodepool.cli", "hivemind_worker")),
        ("hivemind_jupyter.app", ("hivemind_nodepool.pool", "hivemind_nodepool.cli", "hivemind_worker")),
        ("hivemind_nodepool.cli.user", ("hivemind_nodepool.pool", "hivemind_worker", "hivemind_jupyter")),
        ("hivemind_nodepool.cli.up", ("hivemind_nodepool.pool", "hivemind_worker", "hivemind_jupyter")),
    ],
)
def test_importing_an_entry_point_loads_nothing_it_must_not(entry: str, forbidden: tuple[str, ...]) -> None:
    code = (
        f"import sys, {entry}\n"
        f"forbidden = {forbidden!r}\n"
        "bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden))\n"
        "print('\\n'.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "", f"importing {entry} loaded: {done.stdout}"
