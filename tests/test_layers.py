"""The package's layers point one way: a part imports only the parts below it.

From the bottom: records and names; hardware profiles; the config; the task, the work
directory, studies and ONNX Runtime sessions; spaces; kernels; evaluators; the workspace (the
task's model and data, and the two stages); search; runs; the CLI and the package's front door.
Every import counts, those inside functions too (they are how a lower part would reach up).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tightfit

ROOT = Path(tightfit.__file__).parent

LAYERS = [
    ["_records", "_naming", "_secrets", "exceptions", "_optuna_private", "_ort_private",
     "_torch_private", "keys",
     "objectives",
     "_machine"],
    ["hardware_profiles"],
    ["config"],
    ["task", "workdir", "samplers", "studies", "_ort", "examples"],
    ["spaces"],
    ["kernels"],
    ["evaluators"],
    ["workspace"],
    ["search"],
    ["runs"],
    ["cli", "__init__"],
]  # fmt: skip
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str:
    """``tightfit.search._driver`` -> ``search``; ``tightfit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every import of a tightfit module inside tightfit."""
    edges = []
    for path in ROOT.rglob("*.py"):
        me = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
                if node.module == "tightfit":  # from tightfit import objectives
                    targets = [f"tightfit.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges += [(me, t) for t in targets if t.split(".")[0] == "tightfit"]
    return edges


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in ROOT.rglob("*.py")}
    assert parts - set(RANK) == set(), "give each new part a layer in LAYERS"


def test_imports_point_down() -> None:
    upward = [
        f"{a} imports {b}"
        for a, b in imports()
        if RANK[part_of(b)] > RANK[part_of(a)] and part_of(a) != part_of(b)
    ]
    assert upward == []


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in imports():
        graph.setdefault(a, set()).add(b)
    # a package's __init__ re-exporting its modules is not a cycle of the code
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_lower_parts_import_without_the_heavy_ones() -> None:
    """``import tightfit`` stays fast, and a Candidate or a space pulls no torch."""
    code = (
        "import sys, tightfit, tightfit.spaces, tightfit.config, tightfit.objectives;"
        "print(sorted(m for m in ('torch', 'torch_pruning', 'onnx', 'ray', 'mlflow')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """The rule is not vacuous: an import from kernels up to search is caught."""
    fake = tmp_path / "tightfit"
    (fake / "kernels").mkdir(parents=True)
    (fake / "search").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "kernels" / "__init__.py").write_text("def f():\n    from tightfit.search import x\n")
    (fake / "search" / "__init__.py").write_text("from tightfit.kernels import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    edges = imports()
    assert ("tightfit.kernels", "tightfit.search") in edges
    assert any(RANK[part_of(b)] > RANK[part_of(a)] for a, b in edges)
