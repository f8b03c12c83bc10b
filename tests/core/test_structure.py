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
                    continue  # a compiled extension module (nasprobe.measures.ckernels)
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
    assert {"nasprobe.job.probe_job", "nasprobe.frameworks.registry", "nasprobe_torch.plugin",
            "nasprobe_keras.export"} <= set(MODULES)
    assert "nasprobe.contract" in GRAPH["nasprobe.frameworks.registry"]


#: The core's layers, lowest first: a module may import its own package and any lower layer,
#: never a higher one or a sibling of its own layer (docs/architecture.md).
LAYERS = [
    {"nasprobe._version", "nasprobe.errors", "nasprobe.cpus", "nasprobe.contract"},
    {"nasprobe.measures", "nasprobe.probesets", "nasprobe.onnxgraph"},
    {"nasprobe.store", "nasprobe.frameworks"},
    {"nasprobe.job", "nasprobe.plots"},
    {"nasprobe.report", "nasprobe.accessor"},
    {"nasprobe.cli"},
    {"nasprobe.__main__"},
]
ADAPTERS = ("nasprobe_torch", "nasprobe_keras", "nasprobe_jax", "nasprobe_hf")


def _unit(module: str) -> str:
    """The package (or base module) a core module belongs to: ``nasprobe.store.writer`` →
    ``nasprobe.store``; ``nasprobe`` itself (the lazy public face) is its own unit."""
    parts = module.split(".")
    if parts[0] != "nasprobe" or len(parts) == 1:
        return module
    return ".".join(parts[:2])


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} has no layer: add it to LAYERS and docs/architecture.md")


def _upward(graph: dict[str, list[str]]) -> list[str]:
    bad = []
    for m, targets in graph.items():
        if not m.startswith("nasprobe.") or _unit(m) == "nasprobe":
            continue
        for t in targets:
            if not t.startswith("nasprobe.") and t != "nasprobe":
                continue
            src, dst = _unit(m), _unit(t)
            if src == dst or dst == "nasprobe.errors":  # the floor: every module may raise
                continue
            if dst == "nasprobe":
                bad.append(f"{m} imports the package face nasprobe (name the module instead)")
            elif _layer(dst) >= _layer(src):
                bad.append(f"{m} (layer {_layer(src)}) imports {t} (layer {_layer(dst)})")
    return bad


def test_every_core_package_has_a_layer_and_says_what_it_owns():
    units = {_unit(m) for m in MODULES if m.startswith("nasprobe.")}
    for unit in units:
        _layer(unit)
        path = MODULES[unit]
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if path.name == "__init__.py":
            assert "Owns" in doc or "owns" in doc, f"{path}: say what the package owns"
            assert "import" in doc, f"{path}: say what the package may import"


def test_layering_finder_finds_a_planted_upward_import():
    planted = {"nasprobe.measures.nas": ["nasprobe.store.writer"],
               "nasprobe.store.writer": ["nasprobe.measures.nas", "nasprobe.store.layout"],
               "nasprobe.job.tasks": ["nasprobe.plots.line"]}
    assert _upward(planted) == [
        "nasprobe.measures.nas (layer 1) imports nasprobe.store.writer (layer 2)",
        "nasprobe.job.tasks (layer 3) imports nasprobe.plots.line (layer 3)"]


def test_no_package_imports_one_above_it_or_beside_it():
    assert _upward(GRAPH) == []


def test_the_core_never_names_an_adapter_package():
    """Not by import and not by a string that importlib could load."""
    bad = []
    for m, path in MODULES.items():
        if not m.startswith("nasprobe.") and m != "nasprobe":
            continue
        text = path.read_text()
        bad += [f"{path.relative_to(ROOT)}: {a}" for a in ADAPTERS if a in text]
    assert bad == []


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


def _defined(module: str) -> set[str]:
    """Names a module defines itself at its top level (functions, classes, assignments,
    ``try``/``if`` blocks included) — not the names it imports."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    for n in ([t] if isinstance(t, ast.Name) else getattr(t, "elts", [])):
                        if isinstance(n, ast.Name):
                            names.add(n.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
    visit(ast.parse(MODULES[module].read_text()).body)
    return names


def test_each_name_is_imported_from_the_module_that_defines_it():
    """One import path per name: no module passes on a name it imported from another, except
    a package's face (its ``__init__``) for the names of its own modules."""
    bad = []
    for m in MODULES:
        for target, name, line in _imports(m):
            if name is None or name == "*" or MODULES[target].name == "__init__.py":
                continue
            if name not in _defined(target):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {name} from {target}")
    assert bad == []
