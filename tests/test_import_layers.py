"""The engine's import graph: no cycles (lazy imports inside functions count too) and no package importing
one above it in the layering the package docstrings state (base < checkpoints, world < quant < text, vae < models <
sampling < pipeline < demo, training < cli, cli_kinds)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "pixart_delta_core"

# A package may import its own modules and those of lower ranks; the base modules are the ones not in a package.
RANKS = {
    "": 0,  # errors, devices, memory, ops, file_kinds, cli_types, pictures
    "checkpoints": 1,
    "world": 1,  # the shapes world: numpy and PIL over the base modules
    "quant": 2,
    "text": 3,
    "vae": 3,
    "models": 4,
    "sampling": 5,
    "pipeline": 6,
    "demo": 7,
    "training": 7,
    "cli": 8,
    "cli_kinds": 8,  # the command line's reading of what a model file is: it opens every kind
    "__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, names: set[str]) -> set[str]:
    """Engine modules ``path`` imports at run time, at module level or inside functions (not under TYPE_CHECKING)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("pixart_delta_core"):
                target = node.module.removeprefix("pixart_delta_core").lstrip(".")
            else:
                return
            for alias in node.names:  # ``from . import x`` names a module
                joined = f"{target}.{alias.name}" if target else alias.name
                found.add(joined if joined in names else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pixart_delta_core."):
                    found.add(alias.name.removeprefix("pixart_delta_core."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    found.discard("")
    return {name for name in found if name in names}


def import_graph() -> dict[str, set[str]]:
    files = sorted(ENGINE.rglob("*.py"))
    names = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, names) for f in files}


def _rank(module: str) -> int:
    return RANKS.get(module.split(".")[0], 0)  # base modules (errors, devices, ...) are not in RANKS


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_engine_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_is_ranked() -> None:
    packages = {m.split(".")[0] for m in import_graph() if "." in m} | {
        p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    assert packages <= RANKS.keys(), f"rank these packages in RANKS: {sorted(packages - RANKS.keys())}"


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_no_package_imports_one_above_it(module: str) -> None:
    above = [m for m in sorted(import_graph()[module]) if _rank(m) > _rank(module)]
    assert not above, f"{module} (rank {_rank(module)}) imports {above}, ranked above it"
