"""The package's layout rules (docs/architecture.md): no import circle, no upward import, small files."""

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "moviechat"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moviechat"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("moviechat"))
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle_in_the_package():
    edges = graph()
    # a package's __init__ re-exports its modules; the modules themselves must form no cycle
    edges = {k: {m for m in v if not (k.startswith(m + ".") )} for k, v in edges.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                pytest.fail(f"import circle: {' -> '.join(trail[trail.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_lower_rooms_never_import_the_rooms_built_on_them():
    edges = graph()
    lower = ("moviechat.memory", "moviechat.text.prompt", "moviechat.common.atomic", "moviechat.common.registry", "moviechat.text.answers")
    upper = ("moviechat.training.trainer", "moviechat.answering.answerer", "moviechat.runs.export", "moviechat.scoring.moviechat1k", "moviechat.models",
             "moviechat.data")
    for module, deps in edges.items():
        if module.startswith(lower):
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{module} imports {bad}"
    for module in (m for m in edges if m.startswith("moviechat.data")):
        assert not any(d.startswith("moviechat.models") for d in edges[module]), module


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
