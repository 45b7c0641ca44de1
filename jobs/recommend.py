"""Top-K items per user from a trained run, excluding train items, as Parquet in original ids.

    python jobs/recommend.py runs/<run-name> --k 20 --out runs/<run-name>/top20.parquet

Columns: user, rank (1 = best), item, score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.errors import DataError
from ld4mrec_dist.recommend import RecommendError, write_recommendations
from ld4mrec_dist.train.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by jobs/train.py")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (default 20)")
    parser.add_argument("--out", help="output Parquet file (default RUN_DIR/top<K>.parquet)")
    parser.add_argument("--dataset", help="prepared dataset directory, if it moved since training")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (refused on a host without CUDA)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be ≥ 1")
    out = args.out or str(Path(args.run_dir) / f"top{args.k}.parquet")
    try:
        path = write_recommendations(args.run_dir, out, args.k, args.dataset, args.device)
    except (CheckpointError, DataError, RecommendError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
