"""No import cycles among the project's modules (ksbake/ and tasks/).

A cycle works until someone reorders two imports or calls a function while its module is still
half-initialised; a lazy import inside a function closes a cycle just as well (it runs too,
only later), so every ``import`` in a file counts, wherever it stands, except under
``if TYPE_CHECKING:`` (never run: annotations only). ``from X import Y`` is an edge to X, and
to X.Y when that is a module. Parent packages are not implied: ``import ksbake.layers.l2_lock``
is an edge to that module only (Python does run the packages' ``__init__`` first, but a package
that imports nothing of its children closes no cycle through them).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import PROJECT

PACKAGES = ("ksbake", "tasks")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) ``from ... import`` refers to."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of a file but those only a type checker reads (``if TYPE_CHECKING:``)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if _type_checking(node):
            assert isinstance(node, ast.If)
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)
    return nodes


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at run time, anywhere in the file."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    closed path through it (a -> b -> ... -> a) to show in the failure."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, set(c)) for c in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"not a cycle: {sorted(component)}")


def test_the_graph_sees_the_project() -> None:
    graph = import_graph()
    assert {"ksbake.runner", "ksbake.layers", "tasks.layers", "tasks.common"} <= set(graph)
    # a module-level import, a lazy one inside a function, and ``from package import module``
    assert "ksbake.runner" in graph["ksbake.layers"]
    assert "ksbake.layers" in graph["ksbake.layers.l1_kickstart"]  # inside step()
    assert "ksbake.layers.l9_publish" in graph["tasks.layers"]  # from ksbake.layers import ...
    assert "ksbake" in graph["ksbake.runner"]  # from ksbake import report: the package first
    # no implicit edges to parent packages
    assert not {"ksbake", "ksbake.layers"} & graph["ksbake.layers.l2_lock"]
    # annotations only: ``if TYPE_CHECKING: from ksbake.kickstart import Location``
    assert "ksbake.kickstart" not in graph["ksbake.kickstart.compat"]


def test_cycle_detection_finds_a_lazy_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)
