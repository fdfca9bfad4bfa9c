"""The import graph of the ggl package, read from its source (module- and function-level
imports alike): a stage's code is everything its module can import, and the graph must have
no cycle (``tests/test_structure.py``)."""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/ggl
SOURCE_ROOT = Path("src/ggl")  # the same folder, as the pipeline names it from the repository


@cache
def module_files() -> dict[str, Path]:
    """ggl module name -> its source file."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the ggl modules it names in any import statement, wherever it stands."""
    modules = module_files()
    return {name: frozenset(_imports(ast.parse(path.read_text(), str(path))) & set(modules)
                            - {name}) for name, path in modules.items()}


def _imports(node: ast.AST) -> set[str]:
    """Every module an import statement under ``node`` names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return set().union(*map(_imports, ast.iter_child_nodes(node)))


def closure(module: str) -> list[str]:
    """The source files ``module`` may execute: its imports, theirs, and the packages
    (``__init__.py``) on the way, as repository paths; not the pipeline's description
    (``ggl.pipeline``), whose changes that matter change dvc.yaml itself."""
    graph, seen, todo = import_graph(), set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name.startswith("ggl.pipeline"):
            continue
        seen.add(name)
        parents = [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
        todo += [*graph[name], *parents]
    return sorted(str(SOURCE_ROOT / module_files()[m].relative_to(PACKAGE_DIR)) for m in seen)


@cache
def code_digest(module: str) -> str:
    """SHA-256 of the source ``module`` may execute (``closure``): Snakemake reruns a job when
    it changes, by content, as DVC does; file times play no part, so a fresh clone of a
    finished project reruns nothing."""
    digest = hashlib.sha256()
    for path in closure(module):
        digest.update(path.encode() + b"\0")
        digest.update((PACKAGE_DIR / Path(path).relative_to(SOURCE_ROOT)).read_bytes())
    return digest.hexdigest()
