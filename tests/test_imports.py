"""The import graph of lmship: no cycles, and the runtimes sit below the stages.

Read from the source (every ``import`` of an lmship module, at the top of a file or inside a
function), so a lazy import inside a function counts like any other: the runtimes once imported
the OpenVINO stage, which imported validation, evaluation and the evaluation set, which imported
the runtimes again.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "lmship"
#: What a runtime module may import from lmship: the base it stands on, never a stage or a report.
RUNTIME_BASE = {"lmship", "lmship.runtimes", "lmship.files", "lmship.host", "lmship.logs", "lmship.records"}


def _module(path: Path) -> str:
    parts = ["lmship", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The lmship modules ``path`` imports (``from . import x`` of a module counts as that module)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lmship"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "lmship":
                continue
            for alias in node.names:  # a submodule imported by name is an import of that module
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE / Path(*sub.split(".")[1:])).with_suffix(".py").is_file() else target)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in _imports(p) if t in modules} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_reader_sees_lazy_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    imports = _imports(PACKAGE / "runtimes" / "__init__.py")
    assert "lmship.records" in imports  # imported inside artifact_of
    assert "lmship.host" in imports  # imported inside require_bf16


def test_lmship_has_no_import_cycle():
    assert _cycle(_graph()) is None


def test_runtimes_import_only_the_base_below_them():
    graph = _graph()
    for module, imports in graph.items():
        if module.startswith("lmship.runtimes"):
            above = {i for i in imports if not i.startswith("lmship.runtimes") and i not in RUNTIME_BASE}
            assert not above, (module, above)
