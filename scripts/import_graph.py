#!/usr/bin/env python3
"""Print pictl's import graph between packages, and fail on any import circle.

    python3 scripts/import_graph.py            # package -> package arrows, with counts
    python3 scripts/import_graph.py --modules  # module -> module arrows

Every import counts: module level, inside functions, and under TYPE_CHECKING.
Packages are controller's subpackages (controller.rpc, ...), drivers and
drivers.sim. Exit 1 when modules or packages import each other in a circle.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("controller", "drivers")


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found: dict[str, Path] = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules *name* imports (a ``from pkg import module`` counts as the module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
                break
    return out


def package(module: str) -> str:
    """controller.rpc.dispatch -> controller.rpc; drivers.sim.plant -> drivers.sim; drivers.gpio -> drivers."""
    parts = module.split(".")
    if parts[0] == "drivers":
        return "drivers.sim" if len(parts) > 1 and parts[1] == "sim" else "drivers"
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle in *edges*, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_edges(module_edges: dict[str, set[str]]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for source, targets in module_edges.items():
        for target in targets:
            a, b = package(source), package(target)
            if a != b and b != "controller":  # the root package only holds __version__
                counts[(a, b)] += 1
    return counts


def main() -> int:
    module_edges = graph()
    if "--modules" in sys.argv:
        for source in sorted(module_edges):
            for target in sorted(module_edges[source]):
                print(f"{source} -> {target}")
    else:
        for (a, b), n in sorted(package_edges(module_edges).items()):
            print(f"{a} -> {b}  ({n})")
    pkg: dict[str, set[str]] = {}
    for a, b in package_edges(module_edges):
        pkg.setdefault(a, set()).add(b)
    for what, edges in (("module", module_edges), ("package", pkg)):
        found = cycle(edges)
        if found:
            print(f"import circle between {what}s: {' -> '.join(found)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
