"""Imports point one way (issue 23): no circle through the scoring path's modules.

Static: every ``from engine.x import ...`` of a module, at the top or inside a function, but
not under ``if TYPE_CHECKING:`` (type-only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "engine"
SCORING_PATH = ("engine.io.validate", "engine.io.arrow", "engine.models.categorical", "engine.models.reasons",
                "engine.models.scorer", "engine.models.artifact", "engine.backends.stage",
                "engine.backends.block", "engine.backends.gpu_stage", "engine.jobs.blocks", "engine.jobs.partition")


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine."):
            found.add(node.module)
        found |= _imports(node)
    return found


def test_no_import_circle_on_the_scoring_path() -> None:
    graph = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports(ast.parse(f.read_text()))

    def path_back(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    return [*trail, dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
        return None

    assert all(m in graph for m in SCORING_PATH)
    circles = {m: path_back(m) for m in SCORING_PATH}
    assert not any(circles.values()), {m: c for m, c in circles.items() if c}
