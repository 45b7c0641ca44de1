"""Shared pieces of the benchmarks: machine description, datasets, JSONL results, tables.

Every measurement module exposes `run(ctx) -> list[dict]`; each dict is one result row
(a JSON line) with at least `bench`, `name` and `value` (+ `unit`), and, where the row is
a ratio against a reference measured in the same run, `ratio`, `target` and `met`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
# Where a run appends its rows by default: untracked (runs/ is git-ignored), so measuring
# leaves the tree clean. benchmarks/results/ holds the rows the README quotes; a run writes
# there only when asked (`run.py --results-dir benchmarks/results --update-readme`).
RESULTS_DIR = ROOT / "runs" / "benchmarks"
RECORDED_DIR = BENCH_DIR / "results"
DATA_ROOT = BENCH_DIR / ".data"
SEED = 2024

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Context:
    """What every measurement receives: the mode, the run id, where data lives."""

    mode: str  # "quick" | "full"
    run_id: str
    data_root: Path = DATA_ROOT
    gpu: bool = False
    results_dir: Path = RESULTS_DIR
    notes: dict[str, Any] = field(default_factory=dict)  # figures shared between modules

    @property
    def quick(self) -> bool:
        return self.mode == "quick"


# ---------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """A short description of the machine the figures were measured on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem_gb,
            "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray_version, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "loadavg_1m": round(os.getloadavg()[0], 2), "git": git_commit()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- data


def dataset_path(shape: str, data_root: Path = DATA_ROOT) -> Path:
    """The prepared clean synthetic dataset of `shape`, generated once under `data_root`."""
    from data_pipeline.errors import DataError
    from data_pipeline.prepare import prepare_synthetic

    data_root.mkdir(parents=True, exist_ok=True)
    try:
        return Path(prepare_synthetic(shape, "clean", data_root, seed=SEED, progress=False))
    except DataError:  # an older dataset there (the pipeline's config changed): rebuild it
        for stale in data_root.glob(f"item_factors-{shape}-*.npy"):
            stale.unlink()
        return Path(prepare_synthetic(shape, "clean", data_root, seed=SEED, progress=False, overwrite=True))


def item_factors(shape: str, k: int = 64, data_root: Path = DATA_ROOT):
    """V_k of the shape's train matrix (fbpca, as the trainer computes it), cached as .npy."""
    import numpy as np

    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.encoders import svd_item_factors

    path = data_root / f"item_factors-{shape}-k{k}.npy"
    if not path.exists():
        ds = open_dataset(dataset_path(shape, data_root))
        v_IK = svd_item_factors(ds.split_csr("train"), k, SEED)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, v_IK)
        os.replace(tmp, path)
    return np.load(path)


# ---------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_subprocess(args: list[str], timeout: float, env: dict | None = None) -> tuple[dict, float]:
    """Run `python -m benchmarks.<...>` style child; its last stdout line is JSON.
    Returns (that JSON, the child's peak RSS in MB from RUSAGE_CHILDREN)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    # RUSAGE_CHILDREN is the max over all waited-for children: only meaningful if it rose.
    return json.loads(lines[-1]), (after / 1024 if after > before else float("nan"))


# ---------------------------------------------------------------- results


def row(bench: str, name: str, value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    """One result row; `ratio`/`target` given => `met` is filled in (ratio ≥ target)."""
    out = {"bench": bench, "name": name, "value": value, "unit": unit, **extra}
    if out.get("ratio") is not None and out.get("target") is not None:
        out["met"] = bool(out["ratio"] >= out["target"])
    return out


def append_results(ctx: Context, bench: str, rows: list[dict[str, Any]], mach: dict[str, Any]) -> Path:
    """Append the rows to <ctx.results_dir>/<bench>.jsonl, each stamped with run id, mode and machine."""
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.results_dir / f"{bench}.jsonl"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({"run_id": ctx.run_id, "mode": ctx.mode, "time": stamp, **r,
                                "machine": mach}, default=_jsonable) + "\n")
    return path


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def latest_results(benches: list[str], results_dir: Path = RESULTS_DIR) -> dict[str, list[dict[str, Any]]]:
    """Per bench, the rows of its latest run id (the last line's) in `results_dir`."""
    out: dict[str, list[dict[str, Any]]] = {}
    for bench in benches:
        path = results_dir / f"{bench}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if rows:
            last = rows[-1]["run_id"]
            out[bench] = [r for r in rows if r["run_id"] == last]
    return out


def fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        if x != x:
            return "n/a"
        ax = abs(x)
        if unit == "B":
            for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
                if ax >= div:
                    return f"{x / div:.2f} {suffix}"
            return f"{x:.0f} B"
        s = f"{x:,.0f}" if ax >= 1000 else f"{x:.3g}" if ax >= 0.01 else f"{x:.2e}"
        return f"{s} {unit}".strip()
    return str(x)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
