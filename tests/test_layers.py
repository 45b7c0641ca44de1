"""The package's layers follow the data flow: every module has a stated place, imports only
from its own layer or the layers below it, and no modules import each other in a circle.

    1 settings      config                          (imports nothing of the package)
    2 primitives    dist, timing, rows, partition, run_dir, report, encoders, svd_dist, cnet,
                    diffusion, sampler, strategy    (gradient sync at run time),
                    console, tracking               (what a run prints and logs)
    3 model         model, build, step (the one training step of every engine),
                    scaling_model (the cost model and `auto`)
    4 eval/         ranking metrics and evaluation
    5 parallel/     item-parallel C-Net (sharding, its step pieces, top-k, checkpoints)
    6 train/        the loop, its engines and step, the driver
    7 applications  tune/, compare, recommend, cli, cli_help, api (the Python entry point)

Function-level imports count too (and those under `if TYPE_CHECKING:`): they are imports
all the same, and a circle through one is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ld4mrec_dist"
LAYERS = (
    ("__init__", "config"),
    ("dist", "timing", "rows", "partition", "run_dir", "report", "encoders", "svd_dist", "cnet", "diffusion",
     "sampler", "strategy", "console", "tracking"),
    ("model", "build", "step", "scaling_model"),
    ("eval",),
    ("parallel",),
    ("train",),
    ("tune", "compare", "recommend", "cli", "cli_help", "api"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    """`ld4mrec_dist.train.loop` of ld4mrec_dist/train/loop.py (a package: its folder's name)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of `known` the file imports, at any depth of the file: the longest known
    prefix of each imported name (`from ld4mrec_dist import dist` imports ld4mrec_dist.dist)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] or [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found - ({module_name(path)} if path.is_relative_to(PACKAGE) else set())


def layer_name(module: str) -> str:
    """The layer entry of a module: its first part below ld4mrec_dist (the package itself: __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph(SOURCES)


def test_every_module_has_a_stated_layer():
    unplaced = sorted({layer_name(m) for m in GRAPH} - set(LAYER_OF))
    assert not unplaced, f"add {unplaced} to tests/test_layers.py LAYERS (and its docstring) where they belong"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_from_a_layer_above_it(module):
    level = LAYER_OF[layer_name(module)]
    upward = sorted(m for m in GRAPH[module] if LAYER_OF[layer_name(m)] > level)
    assert not upward, f"{module} (layer {level + 1}) imports {upward} from a layer above"


def test_no_import_circle():
    assert circles(GRAPH) == []


def test_the_checker_sees_function_level_and_package_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from ld4mrec_dist import dist as sync\n\ndef f():\n    from ld4mrec_dist.train.loop import x\n")
    assert imported_modules(src, set(GRAPH)) == {"ld4mrec_dist.dist", "ld4mrec_dist.train.loop"}


def test_the_checker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
