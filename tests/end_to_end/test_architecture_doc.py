"""docs/architecture.md names code in backticks; every module, class, function and method it names exists, so
the page a newcomer reads first cannot drift from the code (issue 40: it named a field and a call that were not)."""

import ast
import importlib
import inspect
import re

import pytest

from helpers import REPO

DOC = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "moviechat"


def defined_names() -> set[str]:
    """Every class and function defined anywhere in the package, and every module-level assignment."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def named_in_doc() -> list[str]:
    return sorted(set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", DOC.read_text())))


def resolves(name: str) -> bool:
    """``moviechat.a.b.C.d``: import the longest module prefix, then walk attributes (a class's fields too)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not (hasattr(obj, attr) or attr in getattr(obj, "__dataclass_fields__", {}) or _set_in_init(obj, attr)):
                return False
            obj = getattr(obj, attr, None)
        return True
    return False


def _set_in_init(cls, attr: str) -> bool:
    """An instance attribute its constructor sets (``self.ln_vision = ...``)."""
    init = getattr(cls, "__init__", None)
    try:
        return isinstance(cls, type) and f"self.{attr} =" in inspect.getsource(init)
    except (TypeError, OSError):
        return False


CLASSES = {"MovieChatModel": "moviechat.models.moviechat", "Trainer": "moviechat.training.loop",
           "Answerer": "moviechat.answering.answerer", "Sample": "moviechat.data.collator"}


@pytest.mark.parametrize("name", [n for n in named_in_doc() if n.startswith("moviechat.") or n.split(".")[0] in CLASSES])
def test_every_dotted_name_the_architecture_page_gives_exists(name):
    head = name.split(".")[0]
    full = name if head == "moviechat" else f"{CLASSES[head]}.{name}"
    assert resolves(full), f"docs/architecture.md names `{name}`, which the package does not have"


def test_every_class_the_architecture_page_names_is_defined():
    known = defined_names()
    classes = [n for n in named_in_doc() if "." not in n and n[0].isupper() and not n.isupper()]
    assert classes and [n for n in classes if n not in known] == []
