"""The house rules of ARCHITECTURE.md, read from the code's own imports and string literals."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bridge"


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path, ast.parse(path.read_text(), str(path))


def imported(module: str, tree: ast.Module) -> set[str]:
    """Every module `module` imports, anywhere in it (a function-local import counts too)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join([*module.split(".")[: -node.level], node.module])
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_only_the_store_and_the_composition_root_import_redis() -> None:
    allowed = ("bridge.store", "bridge.services")
    offenders = [
        name
        for name, _, tree in modules()
        if not name.startswith(allowed)
        and any(m == "redis" or m.startswith("redis.") for m in imported(name, tree))
    ]
    assert offenders == []


def test_no_key_name_is_written_outside_the_keys_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for name, path, tree in modules()
        if name != "bridge.store.keys"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("cb:")
    ]
    assert offenders == []


def test_the_bridge_never_imports_the_job_entry_points() -> None:
    offenders = [
        name
        for name, _, tree in modules()
        if any(m == "jobs" or m.startswith("jobs.") for m in imported(name, tree))
    ]
    assert offenders == []


def test_the_bridges_modules_import_each_other_without_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    found = list(modules())
    names = {name for name, _, _ in found}
    for name, _, tree in found:
        # A name imported from a package may be a module of it; keep only bridge modules.
        graph[name] = {m for m in imported(name, tree) if m in names and m != name}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    for name in names:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(" -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for name in sorted(names):
        visit(name, [])
