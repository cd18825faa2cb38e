"""Where things may import from: the import graph of our packages has no circle, and the
processes that run next to every service (agent, worker) never load the controller's apps.

Every import counts, at the top of a file or inside a function: a circle hidden in a function
is still a circle, and an agent that imports apps/ inside a function still needs Django."""

import ast
from pathlib import Path

import pytest

from tests.support.processes import ROOT

PACKAGES = ("apps", "agent", "worker", "protocol", "controller_site", "dcsctl")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (anywhere in the file)."""
    files = {
        module_name(path, root): path
        for package in packages
        for path in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for name in names:
                # The longest prefix that is one of our modules: `from a.b import c` is a.b.c
                # when c is a module, else a.b.
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def graph():
    return build_graph(ROOT)


def test_there_is_no_import_circle(graph):
    assert circles(graph) == []


@pytest.mark.parametrize("package", ["agent", "worker", "protocol"])
def test_the_data_plane_and_protocol_import_nothing_of_the_controller(graph, package):
    wrong = {
        (module, target)
        for module, targets in graph.items()
        if package_of(module) == package
        for target in targets
        if package_of(target) in ("apps", "controller_site")
    }
    assert wrong == set()


def test_protocol_imports_neither_daemon_and_the_daemons_not_each_other(graph):
    allowed = {"protocol": {"protocol"}, "agent": {"agent", "protocol"}}
    allowed["worker"] = {"worker", "protocol"}
    wrong = {
        (module, target)
        for module, targets in graph.items()
        if package_of(module) in allowed
        for target in targets
        if package_of(target) not in allowed[package_of(module)] | {"apps", "controller_site"}
    }
    assert wrong == set()


def test_apps_import_the_daemons_only_in_the_commands_that_start_them(graph):
    wrong = {
        (module, target)
        for module, targets in graph.items()
        if package_of(module) in ("apps", "controller_site")
        and ".management.commands." not in module
        for target in targets
        if package_of(target) in ("agent", "worker")
    }
    assert wrong == set()


def test_a_circle_made_inside_functions_is_found(tmp_path):
    package = tmp_path / "apps"
    (package / "one").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "one" / "__init__.py").write_text("")
    (package / "one" / "a.py").write_text("def f():\n    from apps.one import b\n")
    (package / "one" / "b.py").write_text("from . import c\n")
    (package / "one" / "c.py").write_text("def g():\n    import apps.one.a\n")
    (package / "two.py").write_text("from apps.one.a import f\n")
    found = circles(build_graph(tmp_path, packages=("apps",)))
    assert found == [["apps.one.a", "apps.one.b", "apps.one.c"]]
