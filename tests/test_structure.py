"""The package's structure, drawn from its imports (at module level and inside functions): no
import cycle, and no arrow pointing up the layers below (docs/repository.md draws them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module imports only from its own layer or the layers below it.
LAYERS = [
    ["vla.typed_config", "vla.action_space", "vla.storage", "vla.plots", "vla.ray_init"],
    ["vla.config"],  # every section's config dataclass (vla/*/config.py, vla/eval/settings.py) and the run's
    ["vla.sim"],
    ["vla.model"],
    ["vla.data"],
    ["vla.policy"],
    ["vla.eval"],
    ["vla.train"],
    ["vla.tune"],
    ["vla.cli"],  # the programs (vla-train, ...; pipelines/*.py run them)
]
CONFIG_MODULES = {"config", "settings"}  # vla.<section>.config and vla.eval.settings belong to the config layer


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in (ROOT / "vla").rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``vla`` modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith("vla.") and candidate != name:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) > 2 and parts[-1] in CONFIG_MODULES:
        return 1
    for number, members in enumerate(LAYERS):
        if any(name == m or name.startswith(f"{m}.") for m in members):
            return number
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
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


def test_the_imports_have_no_cycle():
    assert cycles(import_graph()) == []


def test_no_import_points_up_the_layers():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_the_checker_sees_a_cycle_and_an_upward_arrow():
    assert cycles({"vla.a": {"vla.b"}, "vla.b": {"vla.c"}, "vla.c": {"vla.a"}, "vla.d": {"vla.a"}}) == [
        ["vla.a", "vla.b", "vla.c"]]
    assert layer("vla.data.pipeline") > layer("vla.model.heads") > layer("vla.data.config") > layer("vla.storage")
    graph = import_graph()
    assert "vla.storage" in graph["vla.data.metadata"]  # imports inside functions count too:
    assert "vla.data.sources" in graph["vla.train.launch"] or "vla.data" in graph["vla.train.launch"]
