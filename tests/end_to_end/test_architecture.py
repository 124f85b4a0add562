"""The package's layout rules (docs/architecture.md): rooms by job, each importing only the rooms below it
(checked through chains of imports, function-level ones included), docstrings that say what a room holds,
and small classes, functions and files."""

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "moviechat"

# room -> the rooms it may import; a job room (training, answering, scoring, tuning, prepare) is imported by none
# of the lower rooms (common ... runs), not even inside a function
MAY_IMPORT = {
    "common": set(),
    "configs": set(),
    "memory": set(),
    "config": {"common", "memory"},
    "text": {"common", "config"},
    "data": {"common", "config", "text", "memory"},
    "models": {"common", "config", "text", "memory"},
    "runs": {"common", "config", "text", "memory", "data", "models"},
    "training": {"common", "config", "text", "memory", "data", "models", "runs"},
    "answering": {"common", "config", "text", "memory", "data", "models", "runs"},
    "scoring": {"common", "config", "text", "memory", "data", "models", "runs", "answering"},
    "tuning": {"common", "config", "text", "memory", "data", "models", "runs"},
    "prepare": {"common", "config", "text", "memory", "data", "models"},
    "planning": {"common", "config", "text", "memory", "data", "models", "runs", "training"},
    "lmms_eval_plugin": {"common", "config", "text", "memory", "data", "models", "runs", "answering"},
    "demo": {"common", "config", "text", "memory", "data", "models", "runs", "answering", "tuning"},
}
LOWER = ("common", "configs", "memory", "config", "text", "data", "models", "runs")
JOBS = ("training", "answering", "scoring", "tuning", "prepare", "planning", "lmms_eval_plugin", "demo")


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
    edges = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}
    for name in modules:  # importing a.b.c from outside package a.b runs a/b/__init__ too
        parents = {".".join(name.split(".")[:i]) for i in range(2, name.count(".") + 1)}
        for user, deps in edges.items():
            if name in deps:
                deps.update(p for p in parents if p in modules and p != user and not user.startswith(p + "."))
    return edges


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "-"


def chain(edges: dict[str, set[str]], start: str, bad) -> list[str] | None:
    """The shortest chain of imports from ``start`` to a module for which ``bad`` is true."""
    seen, frontier = {start: [start]}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(edges[node]):
                if dep not in seen:
                    seen[dep] = seen[node] + [dep]
                    if bad(dep):
                        return seen[dep]
                    nxt.append(dep)
        frontier = nxt
    return None


def test_the_top_of_the_package_holds_sub_packages_only_each_saying_what_it_holds():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    files = [n for n in top if not (PACKAGE / n).is_dir()]
    assert files == ["__init__.py", "__main__.py"], files
    for folder in (PACKAGE / n for n in top if (PACKAGE / n).is_dir()):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.name}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{folder.name}/__init__.py has no docstring"
    assert {n for n in top if (PACKAGE / n).is_dir()} == set(MAY_IMPORT), "a room not in the rules (or gone)"


def test_every_room_imports_only_the_rooms_below_it():
    bad = []
    for module, deps in graph().items():
        own = room(module)
        if own not in MAY_IMPORT:
            continue
        bad += [f"{module} -> {d}" for d in sorted(deps) if room(d) not in MAY_IMPORT[own] | {own, "-"}]
    assert not bad, bad


def test_no_chain_of_imports_leads_from_a_lower_room_to_a_job():
    edges = graph()
    for module in sorted(m for m in edges if room(m) in LOWER):
        found = chain(edges, module, lambda m: room(m) in JOBS)
        assert found is None, f"{' -> '.join(found)}"


def test_the_rule_catches_a_chain_through_an_innocent_module():
    edges = {"moviechat.data.a": {"moviechat.data.b"}, "moviechat.data.b": {"moviechat.common.c"},
             "moviechat.common.c": {"moviechat.training.loop"}, "moviechat.training.loop": set()}
    assert chain(edges, "moviechat.data.a", lambda m: room(m) in JOBS) == [
        "moviechat.data.a", "moviechat.data.b", "moviechat.common.c", "moviechat.training.loop"]


def test_no_import_circle_in_the_package():
    edges = graph()
    # a package's __init__ re-exports its modules; the modules themselves must form no cycle
    edges = {k: {m for m in v if not k.startswith(m + ".") and not m.startswith(k + ".")} for k, v in edges.items()}
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


def sizes(kind, limit: int) -> dict[str, int]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > limit:
                out[f"{path.relative_to(REPO)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_class_over_200_lines_no_function_over_80_no_module_over_400():
    assert not sizes(ast.ClassDef, 200)
    assert not sizes((ast.FunctionDef, ast.AsyncFunctionDef), 80)
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_scripts_are_thin_and_start_the_package():
    scripts = [REPO / "train.py", *sorted((REPO / "launch").glob("*.py")), *sorted((REPO / "data_pipelines").glob("*.py"))]
    for script in scripts:
        text = script.read_text()
        assert "from moviechat.__main__ import main" in text and len(text.splitlines()) <= 15, script
