"""The package's modules import one another without a cycle: every import counts, a function's
lazy one included (a lazy import hides a cycle from Python, not from the reader); only an import
under ``if TYPE_CHECKING:`` is none (it never runs: annotations name the type)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diagnostics"


def module_name(path: Path) -> str:
    """``diagnostics/grid/spec.py`` -> ``grid.spec``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "diagnostics"


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports (``from diagnostics.x import y``,
    ``from diagnostics.x import module``, ``import diagnostics.x``; relative imports resolved)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) ==
                   "TYPE_CHECKING" for n in ast.walk(block)}  # never imported: a type named in annotations
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] + ([node.module] if node.module else [])
            elif (node.module or "").split(".")[0] == "diagnostics":
                base = node.module.split(".")[1:]
            else:
                continue
            for a in node.names:  # ``from diagnostics.grid import spec`` imports a module, not a name
                name = ".".join(base + [a.name])
                found.add(name if name in MODULES else ".".join(base) or "diagnostics")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("diagnostics.")}
    return {m for m in found if m in MODULES and m != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(p) for name, p in MODULES.items()}


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
    assert len(graph) > 40 and "judge.compare" in graph["judge.repro"]  # the walk sees the package
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
    for name, path in MODULES.items():
        if path.stem == "__main__" or name == "diagnostics":
            continue
        module = importlib.import_module(f"diagnostics.{name}")
        errors |= {f"{name}.{cls_name}": cls for cls_name, cls in vars(module).items()
                   if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == module.__name__}
    assert len(errors) >= 10
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, DiagnosticsError))
    assert outside == ["grid.recipes.UnsupportedImpl"]
