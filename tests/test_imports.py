"""The package's modules import one another without a cycle: every import counts, a function's
lazy one included (a lazy import hides a cycle from Python, not from the reader)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diagnostics"


def imported_modules(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports (``from . import x``, ``from .x import y``,
    ``from diagnostics.x import y``, ``import diagnostics.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            relative = node.level == 1
            absolute = node.level == 0 and (node.module or "").split(".")[0] == "diagnostics"
            if not (relative or absolute):
                continue
            parts = (node.module or "").split(".")[0 if relative else 1:]
            found |= {parts[0]} if parts and parts[0] else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("diagnostics.")}
    return {m for m in found if (PACKAGE / f"{m}.py").exists() and m != path.stem}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: imported_modules(p) for p in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first module repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "compare" in graph["repro"]  # the walk sees the package
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) == []


def test_every_error_the_package_reports_is_a_diagnostics_error():
    """One base, printed once by ``main``: an error class outside it would reach the user as a
    traceback unless every command re-wrapped it. (``UnsupportedImpl`` is a skip, not an error.)"""
    import importlib
    import inspect

    from diagnostics.errors import DiagnosticsError

    errors = {}
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("__main__",):
            continue
        module = importlib.import_module(f"diagnostics.{path.stem}")
        errors |= {f"{path.stem}.{name}": cls for name, cls in vars(module).items()
                   if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == module.__name__}
    assert len(errors) >= 10
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, DiagnosticsError))
    assert outside == ["recipes.UnsupportedImpl"]
