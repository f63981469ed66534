"""The package tree is the architecture: imports run one way between the roles of
``pipeline/``, ``yolov4/`` never imports ``pipeline/``, and no product module imports itself
back through a circle.

Rules (``pipeline.ROLE`` may import the roles listed, and always ``pipeline.errors`` /
``pipeline.faults`` and :mod:`yolov4`):

- ``cli`` -> ``run``, ``worker``, ``store``, ``results``, ``bench``
- ``run`` -> ``worker``, ``store``
- ``bench`` -> ``run`` (the run's settings), ``worker``, ``store``
- ``worker`` -> ``store``
- ``results`` -> ``store``
- ``store`` -> nothing
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("pipeline", "yolov4")
COMMON = {"errors", "faults"}
ALLOWED = {
    "cli": {"run", "worker", "store", "results", "bench"},
    "run": {"worker", "store"},
    "bench": {"run", "worker", "store"},
    "worker": {"store"},
    "results": {"store"},
    "store": set(),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``, relative ones resolved, and
    ``from package import name`` read as ``package.name`` (a submodule or an attribute)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return out


def role(module: str) -> str | None:
    """The role of a ``pipeline`` module (``cli``, ``run``, ...), ``common``, or ``None``."""
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    return "common" if parts[1] in COMMON else parts[1]


def violations(root: Path) -> list[str]:
    """Every import in ``root/pipeline`` and ``root/yolov4`` that breaks the rules above."""
    found = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            here = module_name(path, root)
            here_role = role(here)
            for line, target in imports_of(path, root):
                where = f"{path.relative_to(root)}:{line} imports {target}"
                if package == "yolov4":
                    if target.split(".")[0] == "pipeline":
                        found.append(f"{where}: yolov4 never imports pipeline")
                    continue
                target_role = role(target)
                if target_role is None or target_role in ("common", here_role):
                    continue
                if here_role in (None, "common"):
                    found.append(f"{where}: {here} is shared by every role and imports none")
                elif here_role not in ALLOWED:
                    found.append(f"{where}: {here} is in no role of {sorted(ALLOWED)}")
                elif target_role not in ALLOWED[here_role]:
                    found.append(f"{where}: {here_role} may import only {ALLOWED[here_role]}")
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module-level imports between product modules (imports inside functions are lazy and
    cannot form an import-time circle)."""
    modules = {}
    for package in PRODUCT_PACKAGES:
        for path in (root / package).rglob("*.py"):
            modules[module_name(path, root)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        edges = set()
        for line, target in imports_of(path, root):
            if not any(n.lineno == line for n in top):
                continue
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_imports_follow_the_layering_rule():
    assert violations(REPO) == []


def test_no_import_circle_in_the_product_code():
    assert circles(module_graph(REPO)) == []


def test_every_pipeline_module_belongs_to_a_role():
    for path in (REPO / "pipeline").rglob("*.py"):
        name = module_name(path, REPO)
        assert name == "pipeline" or role(name) in {*ALLOWED, "common"}, name


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        ("pipeline/worker/shard.py", "from pipeline.run.driver import run\n", "worker may import"),
        ("pipeline/store/paths.py", "from ..results import query\n", "store may import"),
        ("pipeline/results/read.py", "import pipeline.cli.main\n", "results may import"),
        ("pipeline/run/plan.py", "def f():\n    from pipeline.cli import main\n", "run may"),
        ("yolov4/model.py", "from pipeline.store import uris\n", "never imports pipeline"),
        ("pipeline/faults.py", "from pipeline.run import driver\n", "shared by every role"),
        ("pipeline/extra.py", "from pipeline.store import uris\n", "in no role"),
    ],
)
def test_the_rule_flags_a_module_that_imports_against_it(tmp_path, relative, text, expected):
    write(tmp_path, "pipeline/__init__.py", "")
    write(tmp_path, "yolov4/__init__.py", "")
    write(tmp_path, relative, text)
    (problem,) = violations(tmp_path)
    assert expected in problem and relative in problem


def test_allowed_imports_pass(tmp_path):
    write(tmp_path, "pipeline/__init__.py", "")
    write(tmp_path, "yolov4/__init__.py", "")
    write(
        tmp_path,
        "pipeline/run/a.py",
        "from pipeline.worker import b\nfrom pipeline import faults\n",
    )
    write(tmp_path, "pipeline/cli/c.py", "from pipeline.results.query import query\n")
    write(tmp_path, "pipeline/worker/d.py", "from . import e\nfrom ..store import uris\n")
    assert violations(tmp_path) == []


def test_a_circle_is_found(tmp_path):
    write(tmp_path, "pipeline/__init__.py", "")
    write(tmp_path, "yolov4/__init__.py", "")
    write(tmp_path, "pipeline/store/a.py", "from pipeline.store import b\n")
    write(tmp_path, "pipeline/store/b.py", "from pipeline.store.a import x\n")
    write(tmp_path, "pipeline/store/c.py", "def f():\n    from pipeline.store import a\n")
    assert circles(module_graph(tmp_path)) == [["pipeline.store.a", "pipeline.store.b"]]
