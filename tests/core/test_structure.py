"""The shape of the code: no import loops, no private name used across modules.

Read from the source with ``ast`` (nothing is imported): every ``import`` statement of the
packages under nasprobe/ and adapters/, at any depth (inside functions and ``TYPE_CHECKING``
blocks too), is an edge from its module to the project module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """Project module name → file."""
    out = {}
    roots = [ROOT / "nasprobe"] + sorted(p for p in (ROOT / "adapters").iterdir() if p.is_dir())
    for pkg in roots:
        if not (pkg / "__init__.py").is_file():
            continue
        for f in sorted(pkg.rglob("*.py")):
            parts = list(f.relative_to(pkg.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(target module, imported name or None, line)`` for every import in ``module``."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node.level, node.module)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if target in MODULES and MODULES[target].name == "__init__.py" and any(
                        MODULES[target].parent.glob(f"{a.name}.*")) and sub not in MODULES:
                    continue  # a compiled extension module (nasprobe.ckernels)
                # ``from pkg import submodule`` imports the submodule
                out.append((sub, None, node.lineno) if sub in MODULES else
                           (target, a.name, node.lineno))
    return [(t, n, line) for t, n, line in out if t in MODULES and t != module]


GRAPH = {m: sorted({t for t, _, _ in _imports(m)}) for m in MODULES}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_the_packages():
    assert {"nasprobe.probe", "nasprobe.adapters", "nasprobe_torch.plugin",
            "nasprobe_keras.export"} <= set(MODULES)
    assert "nasprobe.contract" in GRAPH["nasprobe.adapters"]


def test_cycle_finder_finds_a_planted_loop():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_no_import_loops():
    assert _cycles(GRAPH) == []


def test_no_private_name_imported_across_modules():
    bad = []
    for m in MODULES:
        bound: dict[str, str] = {}  # local name → project module it is bound to
        tree = ast.parse(MODULES[m].read_text())
        for target, name, line in _imports(m):
            if name and name.startswith("_") and not name.startswith("__"):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(m, MODULES[m].name == "__init__.py", node.level, node.module)
                for a in node.names:
                    if f"{base}.{a.name}" in MODULES:
                        bound[a.asname or a.name] = f"{base}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{node.lineno}: "
                           f"{node.value.id}.{node.attr} of {bound[node.value.id]}")
    assert bad == []
