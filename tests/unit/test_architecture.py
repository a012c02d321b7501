"""The package's import graph, read statically: no cycles, and imports point down the pipeline.

Every import counts, wherever it is: at module level, inside a function (a lazy import only hides
a cycle from the interpreter, not from a reader) and under `if TYPE_CHECKING:` (a type named in
a signature is knowledge of the module that defines it: a type-only cycle is a cycle a reader
must hold in their head, and one refactor away from a runtime one).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import hermes_infra
from hermes_infra import STAGES

PACKAGE = Path(hermes_infra.__file__).parent
ROOT = Path(__file__).resolve().parents[2]


def module_files() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """The hermes_infra modules one import statement loads by name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.append(submodule if submodule in modules else base)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, is_package, modules):
                    while target not in modules and "." in target:  # `import a.b.C` style
                        target = target.rpartition(".")[0]
                    if target in modules and target != name and target != "hermes_infra":
                        graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component, back to the start
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


# Cycles and upward imports still to break, each named by its first module in sorted order.
# This list only shrinks: an entry that is no longer true fails the test too.
KNOWN_CYCLES: set[str] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()


def stage_of(module: str) -> int:
    top = module.split(".")[1]
    for number, stage in enumerate(STAGES):
        if top in stage:
            return number
    raise AssertionError(f"{module}: hermes_infra.{top} is in no stage of hermes_infra.STAGES. Fix: add it there")


def test_every_module_is_in_a_stage():
    for module in module_files():
        if module != "hermes_infra":
            stage_of(module)


def test_the_graph_sees_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "hermes_infra.settings.schema" in graph["hermes_infra.plan.capacity"]  # under TYPE_CHECKING
    assert "hermes_infra.images.build" in graph["hermes_infra.cli"]  # inside a function
    assert "hermes_infra.images.archive" in graph["hermes_infra.plan.hostplan"]  # inside a function


def test_no_import_cycles():
    found = cycles(import_graph())
    for cycle in found:
        print("import cycle: " + " -> ".join(cycle))
    assert {cycle[0] for cycle in found} == KNOWN_CYCLES, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_point_down_the_pipeline():
    upward = []
    for module, targets in sorted(import_graph().items()):
        if module == "hermes_infra":
            continue
        for target in sorted(targets):
            if stage_of(target) > stage_of(module):
                upward.append((module, target))
    for module, target in upward:
        print(f"{module} imports {target} (a later stage)")
    assert set(upward) == KNOWN_UPWARD


def test_at_most_ten_top_level_modules():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_architecture_md_lists_the_stages_in_order():
    """ARCHITECTURE.md's stage table names the stages of hermes_infra.STAGES, in that order."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| *(\d+) *\| *([^|]+?) *\|", text, flags=re.MULTILINE)
    documented = [tuple(re.findall(r"`([\w_]+)(?:/|\.py)?`", names)) for _, names in rows]
    assert documented == [tuple(stage) for stage in STAGES]
