"""The package's layers follow the data flow; no module imports from a layer above it.

    base:  config, dist, rows, timing, partition, run_dir, diffusion, cnet, encoders,
           sampler, model, build, strategy  (no imports from the layers below)
    eval/, train/                             (eval never imports train)
    tune/, compare, recommend, cli            (the applications on top)

Function-level imports count too: they are imports all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ld4mrec_dist"
BASE = ("config", "dist", "rows", "timing", "partition", "run_dir", "diffusion", "cnet", "encoders",
        "sampler", "model", "build", "strategy")
UPPER = ("train", "eval", "tune", "compare", "recommend", "cli", "parallel")
FORBIDDEN = {
    **{name: UPPER for name in BASE},
    "eval": ("train", "tune", "compare", "recommend", "cli"),
    "train": ("tune", "compare", "recommend", "cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every `ld4mrec_dist.<first part>` the file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                     if node.module == "ld4mrec_dist" else [])
        found |= {n.split(".")[1] for n in names if n.startswith("ld4mrec_dist.")}
    return found


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_it(path):
    layer = layer_of(path)
    upward = imported_modules(path) & set(FORBIDDEN.get(layer, ()))
    assert not upward, f"{path.relative_to(PACKAGE.parent)} ({layer}) imports {sorted(upward)} from a layer above"


def test_the_checker_sees_function_level_and_package_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from ld4mrec_dist import dist as sync\n\ndef f():\n    from ld4mrec_dist.train.loop import x\n")
    assert imported_modules(src) == {"dist", "train"}
