"""Prepare's peak RSS per input interaction: the in-memory path against the streaming one.

    python benchmarks/prepare_memory.py            # a 50 M-interaction log (streaming path only; see below)
    python benchmarks/prepare_memory.py --quick    # 4 M interactions, both paths side by side

A synthetic interaction log (user_id, item_id, rating, timestamp: one Parquet file written
in 1 M-row record batches, so generating it is itself bounded memory) is prepared by
`jobs/prepare.py --source parquet --setting clean` in a child process that reports its own
peak RSS (ru_maxrss). The baseline is the same child preparing a 1,000-row log (imports,
interpreter); per interaction = (peak - baseline) / interactions. Users are |log| / 50 and
items 50,000, so the O(|U| + |I|) id maps are part of what is measured.

"before" is the in-memory path (`--in-memory`: the whole log in NumPy arrays, the protocol
run once over it); "after" the streaming path (`data_pipeline.streaming`). The full run
measures "before" at 4 M interactions (the in-memory path needs ~N x its per-row bytes, which at
50 M is more than a shared 2-core box should be asked for) and says so in its line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
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
sys.argv = ["prepare.py"] + {args!r}
sys.path.insert(0, {jobs!r})
import prepare
code = prepare.main()
print(json.dumps({{"rc": code, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def peak_rss_kib(log: Path, out: Path, extra: list[str], timeout: float = 3600) -> int:
    """Peak RSS (KiB) of a child running jobs/prepare.py on `log`."""
    args = ["--source", "parquet", "--path", str(log), "--setting", "clean", "--out", str(out), "--overwrite",
            "--no-progress", *extra]
    code = CHILD.format(args=args, jobs=str(REPO / "jobs"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"prepare child failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return int(result["peak_kib"])


def bytes_per_row(work: Path, n_rows: int, extra: list[str], baseline_kib: int) -> tuple[float, int]:
    """(bytes of peak RSS above the baseline per interaction, peak KiB) at `n_rows`."""
    log = write_log(work / f"log-{n_rows}.parquet", n_rows)
    peak = peak_rss_kib(log, work / f"ds-{n_rows}", extra)
    log.unlink()
    return (peak - baseline_kib) * 1024 / n_rows, peak


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--extra", nargs="*", default=[])
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prep-mem-") as tmp:
        work = Path(tmp)
        base = peak_rss_kib(write_log(work / "tiny.parquet", 1000), work / "tiny-ds", a.extra)
        print(json.dumps({"baseline_kib": base}), flush=True)
        for n in a.sizes:
            t0 = time.perf_counter()
            per, peak = bytes_per_row(work, n, a.extra, base)
            print(json.dumps({"rows": n, "peak_kib": peak, "bytes_per_row": round(per, 1),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
