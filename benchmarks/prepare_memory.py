"""Prepare's peak RSS per input interaction: the in-memory path against the streaming one.

    python benchmarks/prepare_memory.py            # in-memory at 4 M, streaming at 4 M and 50 M interactions
    python benchmarks/prepare_memory.py --quick    # in-memory at 4 M, streaming at 4 M and 10 M

A synthetic interaction log (user_id, item_id, rating, timestamp: one Parquet file written
in 1 M-row record batches, so generating it is itself bounded memory) is prepared in the
clean setting by a child process that reports its own peak RSS (ru_maxrss). The baseline is
the same child preparing a 1,000-row log (interpreter, imports); per interaction =
(peak - baseline) / interactions. Users are |log| / 50 and items 50,000, so the
O(|U| + |I|) id maps are part of what is measured.

"before" is the in-memory path, kept selectable from Python (`read_tabular` then
`prepare_dataset`: what jobs/prepare.py ran before the streaming path, ≈ 200 B per
interaction, so 50 M would need ≈ 10 GB of a shared box: it is measured at 4 M); "after" is
`jobs/prepare.py --source parquet`, now `data_pipeline.streaming`.
`run(quick)` returns the lines to print (benchmarks/scale.py prints them too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 50_000
ROWS_PER_USER = 50
BATCH = 1_000_000


def write_log(path: Path, n_rows: int, seed: int = 0, fmt: str = "parquet") -> Path:
    """A synthetic log of `n_rows` interactions written batch by batch (peak memory O(BATCH))."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users = max(1, n_rows // ROWS_PER_USER)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.int8()),
                        ("timestamp", pa.int64())])
    writer = pq.ParquetWriter(path, schema, compression="zstd") if fmt == "parquet" \
        else pacsv.CSVWriter(path, schema)
    try:
        for start in range(0, n_rows, BATCH):
            n = min(BATCH, n_rows - start)
            items = np.minimum(rng.zipf(1.3, n) - 1, N_ITEMS - 1)  # a long-tailed catalogue
            batch = pa.record_batch([pa.array(rng.integers(0, n_users, n)), pa.array(items),
                                     pa.array(rng.integers(1, 6, n).astype(np.int8)),
                                     pa.array(1_600_000_000 + start + np.arange(n))], schema=schema)
            writer.write_batch(batch)
    finally:
        writer.close()
    return path


CHILD = """
import json, resource, sys
from pathlib import Path
log, out, mode = {log!r}, {out!r}, {mode!r}
if mode == "in-memory":   # what jobs/prepare.py did before the streaming path: read it whole, then prepare
    from data_pipeline.prepare import prepare_dataset
    from data_pipeline.readers.tabular import read_tabular
    prepare_dataset(read_tabular(Path(log)), "clean", out, overwrite=True, progress=False)
else:
    sys.path.insert(0, {jobs!r})
    import prepare
    assert prepare.main(["--source", "parquet", "--path", log, "--setting", "clean", "--out", out,
                         "--overwrite", "--no-progress"]) == 0
print(json.dumps({{"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""
MODES = ("in-memory", "streaming")


def peak_rss_kib(log: Path, out: Path, mode: str, timeout: float = 3600) -> int:
    """Peak RSS (KiB) of a child preparing `log` by `mode` (its own ru_maxrss)."""
    code = CHILD.format(log=str(log), out=str(out), mode=mode, jobs=str(REPO / "jobs"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"prepare child ({mode}) failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"])


@dataclass
class Measured:
    mode: str
    rows: int
    peak_kib: int
    baseline_kib: int
    seconds: float

    @property
    def bytes_per_row(self) -> float:
        return (self.peak_kib - self.baseline_kib) * 1024 / self.rows

    def line(self) -> str:
        return (f"prepare {self.mode:<9} {self.rows:>12,} interactions: peak RSS {self.peak_kib / 1024:8.0f} MiB "
                f"(baseline {self.baseline_kib / 1024:.0f} MiB), {self.bytes_per_row:7.1f} B/interaction, "
                f"{self.seconds:.0f} s")


def measure(work: Path, plan: list[tuple[str, int]]) -> list[Measured]:
    """Each (mode, rows) of `plan` prepared in a fresh child; logs generated once per size."""
    tiny = write_log(work / "tiny.parquet", 1000)
    baseline = {m: peak_rss_kib(tiny, work / "tiny-ds", m) for m in {m for m, _ in plan}}
    results = []
    for rows in sorted({n for _, n in plan}):
        log = write_log(work / f"log-{rows}.parquet", rows)
        for mode in [m for m, n in plan if n == rows]:
            t0 = time.perf_counter()
            peak = peak_rss_kib(log, work / f"ds-{rows}-{mode}", mode)
            results.append(Measured(mode, rows, peak, baseline[mode], time.perf_counter() - t0))
            shutil.rmtree(work / f"ds-{rows}-{mode}", ignore_errors=True)
        log.unlink()
    return results


QUICK = [("in-memory", 4_000_000), ("streaming", 4_000_000), ("streaming", 10_000_000)]
FULL = [("in-memory", 4_000_000), ("streaming", 4_000_000), ("streaming", 50_000_000)]


def run(quick: bool) -> list[str]:
    """Lines to print: one per measurement, then `before → after` per interaction (last)."""
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="prepare-memory-") as tmp:
        results = measure(Path(tmp), plan)
    before = max((r for r in results if r.mode == "in-memory"), key=lambda r: r.rows)
    after = max((r for r in results if r.mode == "streaming"), key=lambda r: r.rows)
    lines = [r.line() for r in results]
    if quick:
        lines.append(f"(--quick: the largest log here has {after.rows:,} interactions; the full run prepares 50 M)")
    lines.append(f"prepare peak RSS per interaction: before {before.bytes_per_row:.1f} B (in-memory path, "
                 f"{before.rows:,} interactions) -> after {after.bytes_per_row:.1f} B (streaming, {after.rows:,} "
                 f"interactions; peak {before.peak_kib / 1024:.0f} -> {after.peak_kib / 1024:.0f} MiB)")
    return lines


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="at most 10 M interactions (≈ 1 min of CPU, 2-5 min on a shared 2-core box)")
    a = p.parse_args()
    for text in run(a.quick):
        print(text, flush=True)
