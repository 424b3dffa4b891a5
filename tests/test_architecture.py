"""The layering of ARCHITECTURE.md, read from the code's own imports (every import statement of every module of the
package, at the top or inside a function, parsed with ast): each package imports only itself and the layers below
it (runtime <- train <- export <- bench <- cli), no import circle joins two modules, no module imports another's
private (underscore) name, and the runtime has no import statement for MindSpore."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from conftest import REPO

LAYERS = ("runtime", "train", "export", "bench", "cli")  # bottom to top
PACKAGES = LAYERS[:-1]


def module_name(path: Path) -> str:
    """ms_ddpm's module for a file of the checkout: runtime/mslite/engine.py -> "runtime.mslite.engine"."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> Dict[str, Path]:
    files = [REPO / "cli.py", *(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))]
    return {module_name(path): path for path in files}


def imports(name: str, path: Path, modules: Dict[str, Path]) -> Iterator[Tuple[str, str, int]]:
    """(imported module of the package or other top-level module, the name taken from it or "", line) per import;
    modules of the package are named without the "ms_ddpm." prefix."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.removeprefix("ms_ddpm."), "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = (node.module or "").removeprefix("ms_ddpm.")
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                yield (submodule, "", node.lineno) if submodule in modules else (target, alias.name, node.lineno)


def layer(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def graph() -> Dict[str, List[Tuple[str, str, int]]]:
    modules = package_modules()
    assert {"runtime.pipeline", "train.trainer", "export.pipeline", "bench.latency", "cli"} <= set(modules)
    return {name: list(imports(name, path, modules)) for name, path in modules.items()}


def test_the_module_names_and_the_import_parser_agree_on_a_known_module(graph):
    """The parser sees relative, absolute and in-function imports (the test below is only as good as it)."""
    edges = {target for target, _, _ in graph["export.pipeline"]}
    assert {"train", "runtime.backends", "export.record", "export.sampler_export", "mindspore"} <= edges
    taken = {(target, taken) for target, taken, _ in graph["bench.latency"]}
    assert ("export.pipeline", "ExportRequest") in taken  # imported inside make_models


def test_each_package_imports_only_itself_and_the_layers_below(graph):
    climbing = [f"{name}:{line} imports {target}" for name, edges in graph.items() for target, _, line in edges
                if layer(target) in LAYERS and LAYERS.index(layer(target)) > LAYERS.index(layer(name))]
    assert not climbing, climbing


def test_no_import_circle_between_modules(graph):
    nodes = set(graph)
    edges = {name: {target for target, _, _ in targets if target in nodes and target != name}
             for name, targets in graph.items()}
    circles = strongly_connected(edges)
    assert not circles, circles


def test_no_private_name_is_imported_from_another_module(graph):
    """Neither in the package nor from the package into the tests."""
    modules = package_modules()
    tests = {f"tests.{path.stem}": list(imports(f"tests.{path.stem}", path, modules))
             for path in (REPO / "tests").glob("*.py")}
    private = [f"{name}:{line} takes {taken} from {target}" for name, edges in {**graph, **tests}.items()
               for target, taken, line in edges if taken.startswith("_") and target != name
               and (name in graph or layer(target) in LAYERS)]
    assert not private, private


def test_the_runtime_has_no_mindspore_import(graph):
    """The runtime loads MindSpore only by name, in its `mindspore` backend when asked for (runtime/backends.py)."""
    found = [f"{name}:{line}" for name, edges in graph.items() if layer(name) == "runtime"
             for target, _, line in edges if target.split(".")[0] == "mindspore"]
    assert not found, found


def strongly_connected(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The import circles: Tarjan's strongly connected components of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
