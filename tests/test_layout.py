"""The layout's dependency rules, read from the source (the AST of every module), not from imports
that happened to run: `store` and `worlds` import nothing of ours; `policies` and `rewards` never
import `workers` or `loop`; `rewards` never imports `policies`; `workers` never imports `loop`;
`migrations` imports only `store`; and no two modules import each other, directly or around a
circle (imports inside functions count too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "worlds", "policies", "rewards", "workers", "loop", "migrations")
MAY_NOT_IMPORT = {
    "store": set(PACKAGES) - {"store"},
    "worlds": set(PACKAGES) - {"worlds"},
    "policies": {"workers", "loop", "migrations"},
    "rewards": {"policies", "workers", "loop", "migrations"},
    "workers": {"loop", "migrations"},
    "migrations": set(PACKAGES) - {"migrations", "store"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `path` imports (`from a import b` is a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_package_imports_only_what_the_layout_allows() -> None:
    broken = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if target.split(".")[0] in MAY_NOT_IMPORT.get(module.split(".")[0], set())
    ]
    assert broken == []


def test_no_module_imports_itself_around_a_circle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_checks_see_what_they_forbid() -> None:
    # The graph is not empty and the cycle finder finds a planted circle.
    graph = import_graph()
    assert "loop.training.gate" in graph["loop.training.jobs"]
    assert "store.retry" in graph["store.db"]
    planted = {**graph, "store.retry": graph["store.retry"] | {"store.db"}}
    cycle = find_cycle(planted)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"store.db", "store.retry"}
