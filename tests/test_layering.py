"""The package's layers (docs/architecture.md): imports go downward only, function-level imports included.

Every module under harness/ is parsed with `ast`; each import of a harness module (at the top, in a function, under
TYPE_CHECKING, or an `importlib.import_module("harness...")` plugin load) is an edge. The test fails on an edge
to a package of the same or a higher layer, and on any cycle among modules (within a package too).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each top-level package or module of harness (docs/architecture.md draws the same diagram).
#: Within L1 and L2, the half layers order the packages that build on a neighbour: results records the lock
#: (stack), and models' modality glue turns examples into batches (data).
LAYERS: dict[str, float] = {
    "core": 0,
    "config": 1, "stack": 1,
    "results": 1.5,
    "adapters": 2, "data": 2, "render": 2,
    "models": 2.5,
    "objectives": 3, "benchmarks": 3,
    "spec": 4,
    "train": 5, "scoring": 5, "tracking": 5, "attacks": 5,
    "pipeline": 6,
    "commands": 7,
    "cli": 8,
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under `root/harness`."""
    mods = {}
    for path in sorted((root / "harness").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _targets(node: ast.AST, current: str, is_package: bool, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = current.split(".")
            if not is_package:
                parts = parts[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name) and node.args
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
        if isinstance(arg, ast.JoinedStr):
            pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant)
                              else re.escape(current) if isinstance(v.value, ast.Name) and v.value.id == "__name__"
                              else r"[^.]+" for v in arg.values)
            return [m for m in mods if re.fullmatch(pattern, m)]
    return []


def import_edges(root: Path) -> dict[str, set[str]]:
    """Module -> the harness modules it imports anywhere in its body."""
    mods = module_names(root)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        out = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node, name, path.name == "__init__.py", mods):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target.startswith("harness.") and target != name:
                    out.add(target)
    return edges


def package_of(module: str) -> str:
    """The top-level package (or module) of `module` inside harness: `harness.core.io` -> `core`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a package in the same or a higher layer (the package's own modules aside)."""
    bad = []
    for a, targets in sorted(edges.items()):
        pa = package_of(a)
        for b in sorted(targets):
            pb = package_of(b)
            if pa == pb or not pa:
                continue
            if pa not in LAYERS or pb not in LAYERS:
                bad.append(f"{a} -> {b}: package without a layer (add it to LAYERS)")
            elif LAYERS[pb] >= LAYERS[pa]:
                bad.append(f"{a} (L{LAYERS[pa]:g}) -> {b} (L{LAYERS[pb]:g})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    missing = sorted({package_of(m) for m in module_names(ROOT)} - set(LAYERS) - {""})
    assert not missing, f"packages without a layer: {missing}"


def test_imports_go_downward_only():
    bad = layer_violations(import_edges(ROOT))
    assert not bad, "imports that do not go downward:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_edges(ROOT))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("source", [
    "from harness.spec import JobSpec\n",
    "def f():\n    from harness.spec import JobSpec\n",
    "import importlib\nimportlib.import_module('harness.spec')\n",
])
def test_an_upward_import_is_caught(tmp_path, source):
    """The checks themselves: an adapter module importing the job spec (L2 -> L4), at the top or in a function."""
    root = _tree(tmp_path, {"harness/__init__.py": "", "harness/spec.py": "",
                            "harness/adapters/__init__.py": "", "harness/adapters/layer.py": source})
    assert layer_violations(import_edges(root)) == ["harness.adapters.layer (L2) -> harness.spec (L4)"]


def test_a_cycle_is_caught(tmp_path):
    root = _tree(tmp_path, {"harness/__init__.py": "", "harness/core/__init__.py": "",
                            "harness/core/a.py": "from harness.core import b\n",
                            "harness/core/b.py": "def f():\n    import harness.core.a\n"})
    assert cycles(import_edges(root)) == [["harness.core.a", "harness.core.b"]]


def test_adapters_are_plain_torch():
    """`import harness.adapters` loads no objective, benchmark, job spec, training, scoring, tracking or pandas."""
    code = ("import sys, harness.adapters; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('harness') or m.split('.')[0] == 'pandas'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.split()
    forbidden = ("harness.objectives", "harness.benchmarks", "harness.spec", "harness.tracking", "harness.train",
                 "harness.scoring", "harness.pipeline", "harness.commands", "pandas")
    assert not [m for m in loaded if m.startswith(forbidden)], loaded
    assert all(package_of(m) in ("", "core", "config", "adapters") for m in loaded), loaded
