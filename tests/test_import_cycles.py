"""No import circle runs through the training, distributed or config modules: each imports only
what comes before it in the data flow (imports inside functions count too)."""

import ast
from pathlib import Path

import tooltune

ROOT = Path(tooltune.__file__).parent
CHECKED = ("tooltune.training", "tooltune.distributed", "tooltune.config")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        deps = set()
        for target in targets:
            while target and target not in modules:  # `from pkg import name`: pkg's module
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_import_circle_runs_through_training_distributed_or_config():
    graph = import_graph()
    assert "tooltune.training.pipeline" in graph and "tooltune.rollout" in graph
    circles = [
        name for name in graph if name.startswith(CHECKED) and name in reachable(graph, name)
    ]
    assert circles == [], f"modules that import themselves through others: {circles}"
