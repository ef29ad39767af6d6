"""The import graph of ``router``, ``policies`` and ``providers``, read with ``ast``: no
cycle among the imports a module runs when it is imported, and ``policies`` and
``providers`` import nothing of ``router``, not even lazily or for type checking.

Imports inside functions are deliberate deferrals (run when called, after every module
is loaded) and those under ``if TYPE_CHECKING:`` never run, so neither makes a cycle; a
``from package import submodule`` depends on the submodule, not on the package's
``__init__``. Each check is also run on a small package written for it, so that a check
that could never fail is caught too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "policies", "providers")
# Packages that must stay usable without the router: they may import each other only.
INDEPENDENT = ("policies", "providers")

Graph = dict[str, set[str]]


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> its file, for every module of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(body: list[ast.stmt], *, every: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body``: those run at import time, or ``every`` one."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if every:
                yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            if every:
                yield from _imports(node.body, every=every)
            yield from _imports(node.orelse, every=every)
        else:
            for name in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, name, None)
                if isinstance(inner, list):
                    yield from _imports(inner, every=every)


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]
) -> set[str]:
    """The modules of ``known`` that ``node`` (in ``module``) imports."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:
        base = module.split(".")[: None if is_package else -1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        # ``from pkg import sub`` needs ``sub``; ``from pkg import name`` needs pkg itself.
        out.add(sub if sub in known else prefix)
    return {m for m in out if m in known}


def graph(known: dict[str, Path], *, every: bool = False) -> Graph:
    edges: Graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _imports(tree.body, every=every):
            deps |= _targets(module, is_package, node, known)
        deps.discard(module)
        edges[module] = deps
    return edges


def cycles(edges: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def forbidden(edges: Graph, independent: tuple[str, ...], banned: str) -> list[str]:
    """``module -> dependency`` for every import of ``banned`` by an ``independent`` package."""
    return sorted(
        f"{module} -> {dep}"
        for module, deps in edges.items()
        if module.split(".")[0] in independent
        for dep in deps
        if dep.split(".")[0] == banned
    )


def test_router_policies_and_providers_import_no_cycle() -> None:
    edges = graph(modules(ROOT, PACKAGES))
    assert len(edges) > 100  # the walk found the code, not an empty tree
    assert cycles(edges) == []


def test_policies_and_providers_import_nothing_of_router() -> None:
    edges = graph(modules(ROOT, PACKAGES), every=True)
    assert forbidden(edges, INDEPENDENT, "router") == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above on a package made to break them: they must say so."""
    _write(
        tmp_path,
        {
            "router/__init__.py": "",
            "router/a.py": "from router.b import x\n",
            "router/b.py": "from . import c\nx = 1\n",
            "router/c.py": "import router.a\n",
            # Not cycles: a deferred import, one for type checking, a package's submodule.
            "router/d.py": "def f():\n    from router import e\n",
            "router/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from router import d\nfrom router import f\n",
            "router/f/__init__.py": "from router.f.g import y\n",
            "router/f/g.py": "from router.f import h\ny = 2\n",
            "router/f/h.py": "",
            "providers/__init__.py": "",
            "providers/p.py": "def late():\n    from router.a import x\n",
        },
    )
    edges = graph(modules(tmp_path, PACKAGES))
    assert cycles(edges) == [["router.a", "router.b", "router.c"]]
    every = graph(modules(tmp_path, PACKAGES), every=True)
    assert forbidden(every, INDEPENDENT, "router") == ["providers.p -> router.a"]
