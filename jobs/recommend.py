"""Top-K items per user from a trained run, excluding train items, as Parquet in original ids.

    python jobs/recommend.py runs/<run-name> --k 20 --out runs/<run-name>/top20.parquet
    python jobs/recommend.py runs/<run-name> --users 42 1337 --items data/ml-1m/ml-1m.item --item-columns title
    python jobs/recommend.py runs/<run-name> --users-file users.txt --k 10

Columns: user, rank (1 = best), item, score, then any --item-columns. The first rows are
printed; the whole table is in the Parquet file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.errors import DataError
from ld4mrec_dist.recommend import RecommendError, read_user_ids, recommendation_table, write_table
from ld4mrec_dist.report import format_table
from ld4mrec_dist.train.checkpoint import CheckpointError

SHOWN_ROWS = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by jobs/train.py")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (default 20)")
    parser.add_argument("--out", help="output Parquet file (default RUN_DIR/top<K>.parquet; with --users or "
                                      "--users-file, RUN_DIR/top<K>-users.parquet)")
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--users", nargs="+", metavar="ID", help="only these users (original ids; default: all)")
    users.add_argument("--users-file", metavar="FILE", help="only the users listed in FILE, one id per line")
    parser.add_argument("--items", metavar="FILE",
                        help="item table for --item-columns: CSV, TSV, Parquet or a RecBole .item file")
    parser.add_argument("--items-key", default="item_id", help="its item id column (default item_id)")
    parser.add_argument("--item-columns", nargs="+", default=[], metavar="COLUMN",
                        help="columns of --items joined into the output, e.g. title")
    parser.add_argument("--dataset", help="prepared dataset directory, if it moved since training")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (refused on a host without CUDA)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be ≥ 1")
    return args


def default_name(k: int, subset: bool) -> str:
    """top<K>.parquet for every user; top<K>-users.parquet for the users asked for, so that a
    lookup of a few users never replaces the export of all of them."""
    return f"top{k}-users.parquet" if subset else f"top{k}.parquet"


def first_rows(table: pa.Table, n: int = SHOWN_ROWS) -> str:
    head = table.slice(0, n).to_pylist()
    cells = [[v if isinstance(v, (int, float)) else ("" if v is None else str(v)) for v in row.values()]
             for row in head]
    return format_table(table.column_names, cells)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or str(Path(args.run_dir) / default_name(args.k, subset=bool(args.users or args.users_file)))
    try:
        users = read_user_ids(args.users_file) if args.users_file else args.users
        table = recommendation_table(args.run_dir, args.k, args.dataset, args.device, users=users,
                                     items=args.items, item_columns=args.item_columns, items_key=args.items_key)
        path = write_table(table, out)
    except (CheckpointError, DataError, RecommendError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(first_rows(table))
    shown = min(SHOWN_ROWS, table.num_rows)
    print(f"wrote {path}: {table.num_rows} rows ({shown} shown above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
