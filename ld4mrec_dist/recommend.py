"""Top-K recommendations from a trained run, in the dataset's original ids.

Shapes: B users scored at once, I items, K recommendations per user.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset, open_dataset
from ld4mrec_dist.build import build_model
from ld4mrec_dist.config import Config, config_from_dict
from ld4mrec_dist.eval.metrics import mask_items
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.rows import to_dense, to_torch_csr, users_with_rows
from ld4mrec_dist.run_dir import BEST_MODEL_FILE, read_vouched
from ld4mrec_dist.train.checkpoint import CheckpointError, load_state_bytes


class RecommendError(ValueError):
    """A recommend request that cannot run (run directory, dataset, device): one line with the fix."""


def check_device(device: str) -> torch.device:
    """The torch device, refusing CUDA on a host without it (torch would fail deep inside)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RecommendError(f"--device {device}: not a device; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecommendError(f"--device {device}: this host has no CUDA GPU (torch.cuda.is_available() "
                             "is False); use --device cpu")
    return dev


def run_dataset(cfg: Config, dataset: str | None) -> PreparedDataset:
    """The dataset to score: `dataset` if given, else the one the run trained on; a dataset
    that moved since training points to --dataset."""
    from ld4mrec_dist.run_dir import resolve_dataset

    if dataset:
        if not storage.exists(dataset):
            raise RecommendError(f"--dataset {dataset}: no such dataset directory")
        return open_dataset(dataset)
    location = storage.normalize(cfg.data.path) if cfg.data.path else None
    if location and not storage.exists(location):
        raise RecommendError(f"the run's dataset {location} is gone (moved or deleted since training): "
                             "pass --dataset DIR with its new location")
    return open_dataset(resolve_dataset(cfg))


def load_best_model(run_dir: str | Path, dataset: str | None = None,
                    device: str = "cpu") -> tuple[LD4MRec, Config, PreparedDataset]:
    """The run's best model (safe load), its config and its dataset (hash-checked)."""
    dev = check_device(device)
    if not storage.exists(run_dir):
        raise RecommendError(f"{run_dir}: no such run directory")
    path = storage.join(run_dir, BEST_MODEL_FILE)
    if not storage.is_file(path):
        raise CheckpointError(f"{path} not found: the run has not finished an evaluation yet")
    saved = load_state_bytes(read_vouched(run_dir, BEST_MODEL_FILE), path)
    cfg = config_from_dict(saved["config"])
    ds = run_dataset(cfg, dataset)
    if ds.manifest_sha256 != saved["manifest_sha256"]:
        raise CheckpointError(f"{path} was trained on another dataset than {ds.location} "
                              "(manifest sha256 differs): pass --dataset with the training data")
    model = build_model(cfg, ds, saved["item_factors"].numpy(), dev)
    model.load_state_dict(saved["model"])
    model.eval()
    return model, cfg, ds


def user_indices(ds: PreparedDataset, wanted: list[str]) -> np.ndarray:
    """Row indices of the users named by their original ids, in the order given; a
    RecommendError names the ids that the dataset does not hold or that have no train items."""
    index_of = {str(u): i for i, u in enumerate(ds.user_ids)}
    unknown = [u for u in wanted if u not in index_of]
    if unknown:
        examples = ", ".join(str(u) for u in ds.user_ids[:3])
        more = " …" if len(unknown) > 5 else ""
        raise RecommendError(f"--users: {len(unknown)} id(s) not in the dataset {ds.location}: "
                             f"{', '.join(unknown[:5])}{more} (its ids look like {examples})")
    users = np.array([index_of[u] for u in dict.fromkeys(wanted)], dtype=np.int64)
    with_rows = set(users_with_rows(ds.split_csr("train")).tolist())
    cold = [str(ds.user_ids[u]) for u in users if u not in with_rows]
    if cold:
        raise RecommendError(f"--users: {', '.join(cold[:5])} had no train interaction: the model has no "
                             "history to recommend from")
    return users


def read_user_ids(path: str) -> list[str]:
    """Original user ids, one per line (blank lines and `#` comments skipped)."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise RecommendError(f"--users-file {path}: file not found") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [u for u in ids if u]
    if not ids:
        raise RecommendError(f"--users-file {path}: no user id in it (one id per line)")
    return ids


def read_item_columns(path: str, key: str, columns: list[str]) -> pa.Table:
    """`key` (as strings) and `columns` of an item table: CSV, TSV, Parquet or a RecBole
    `.item` file (typed headers such as `title:token_seq`, read by their field names)."""
    from data_pipeline.errors import DataError
    from data_pipeline.readers.recbole import typed_table
    from data_pipeline.readers.tabular import read_table

    file = Path(path)
    try:
        table = typed_table(file)[0] if file.suffix == ".item" else read_table(file)[0]
    except DataError as err:
        raise RecommendError(f"--items {err}") from None
    missing = [c for c in [key, *columns] if c not in table.column_names]
    if missing:
        raise RecommendError(f"--items {path}: no column {missing[0]!r} (from "
                             f"{'--items-key' if missing[0] == key else '--item-columns'}); "
                             f"it has {table.column_names}")
    return pa.table({key: table[key].cast(pa.string()), **{c: table[c] for c in columns}})


def with_item_columns(recs: pa.Table, items: pa.Table, key: str) -> pa.Table:
    """`recs` with the item table's columns appended, matched on the item id (null where the
    item table lacks the item); a column named like one of recs' is prefixed `item_`."""
    import pyarrow.compute as pc

    where = pc.index_in(recs["item"], value_set=items[key])
    for name in items.column_names:
        if name != key:
            column = items[name].combine_chunks().take(where)
            recs = recs.append_column(f"item_{name}" if name in recs.column_names else name, column)
    return recs


@torch.no_grad()
def top_k_table(model: LD4MRec, ds: PreparedDataset, k: int, batch_size: int = 1024,
                device: str = "cpu", progress: bool = True, users: np.ndarray | None = None) -> pa.Table:
    """(user, rank, item, score) rows in original ids; train items are never recommended.
    `users`: row indices of the users to score (default: every user with train items)."""
    train = ds.split_csr("train")
    users = users_with_rows(train) if users is None else users
    k = min(k, ds.n_items)
    out_u, out_i, out_s = [], [], []
    for start in tqdm(range(0, len(users), batch_size), desc="scoring", unit="batch",
                      disable=None if progress else True):
        users_B = users[start:start + batch_size]
        rows = train[users_B]
        scores_BI = model.score(to_torch_csr(rows, device), torch.from_numpy(users_B).to(device)).float()
        top = torch.topk(mask_items(scores_BI, to_dense(rows, device)), k, dim=1)
        out_u.append(np.repeat(users_B, k))
        out_i.append(top.indices.cpu().numpy().ravel())
        out_s.append(top.values.cpu().numpy().ravel())
    u = np.concatenate(out_u) if out_u else np.zeros(0, np.int64)
    i = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.float32)
    valid = np.isfinite(s)  # users with fewer than K unseen items
    return pa.table({
        "user": pa.array(np.asarray(ds.user_ids)[u[valid]].astype(str)),
        "rank": pa.array((np.tile(np.arange(1, k + 1), len(u) // k if k else 0))[valid].astype(np.int32)),
        "item": pa.array(np.asarray(ds.item_ids)[i[valid]].astype(str)),
        "score": pa.array(s[valid].astype(np.float32)),
    })


def recommendation_table(run_dir: str | Path, k: int = 20, dataset: str | None = None, device: str = "cpu",
                         users: list[str] | None = None, items: str | None = None,
                         item_columns: list[str] | None = None, items_key: str = "item_id") -> pa.Table:
    """The top-K table of every user with train items, or of `users` (original ids), with
    `item_columns` of the `items` table joined on the item id."""
    if item_columns and not items:
        raise RecommendError("--item-columns needs --items FILE: the item table that holds them "
                             "(CSV, TSV, Parquet or a RecBole .item file)")
    extra = read_item_columns(items, items_key, item_columns or []) if items else None
    model, _, ds = load_best_model(run_dir, dataset, device)
    table = top_k_table(model, ds, k, device=device, users=user_indices(ds, users) if users else None)
    return with_item_columns(table, extra, items_key) if extra is not None else table


def write_table(table: pa.Table, out: str | Path) -> str:
    """`table` as Parquet at `out` (local path or URI); returns where it went."""
    storage.make_dirs(storage.parent_of(out))
    fs, path = storage.filesystem(out)
    pq.write_table(table, path, filesystem=fs)
    return storage.normalize(out)


def write_recommendations(run_dir: str | Path, out: str | Path, k: int = 20,
                          dataset: str | None = None, device: str = "cpu") -> str:
    """Write every user's top-K table to `out` (local path or URI); returns where it went."""
    return write_table(recommendation_table(run_dir, k, dataset, device), out)
