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
from ld4mrec_dist.config import Config, config_from_dict
from ld4mrec_dist.eval.metrics import mask_items
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.train.batches import to_dense, to_torch_csr, users_with_rows
from ld4mrec_dist.train.checkpoint import CheckpointError, load_state_bytes
from ld4mrec_dist.train.loop import BEST_MODEL_FILE, build_model


def load_best_model(run_dir: str | Path, dataset: str | None = None,
                    device: str = "cpu") -> tuple[LD4MRec, Config, PreparedDataset]:
    """The run's best model (safe load), its config and its dataset (hash-checked)."""
    from ld4mrec_dist.train.trainer import resolve_dataset

    path = storage.join(run_dir, BEST_MODEL_FILE)
    if not storage.is_file(path):
        raise CheckpointError(f"{path} not found: the run has not finished an evaluation yet")
    saved = load_state_bytes(storage.read_bytes(path), path)
    cfg = config_from_dict(saved["config"])
    ds = open_dataset(dataset or resolve_dataset(cfg))
    if ds.manifest_sha256 != saved["manifest_sha256"]:
        raise CheckpointError(f"{path} was trained on another dataset than {ds.location} "
                              "(manifest sha256 differs): pass --dataset with the training data")
    model = build_model(cfg, ds, saved["item_factors"].numpy(), torch.device(device))
    model.load_state_dict(saved["model"])
    model.eval()
    return model, cfg, ds


@torch.no_grad()
def top_k_table(model: LD4MRec, ds: PreparedDataset, k: int, batch_size: int = 1024,
                device: str = "cpu", progress: bool = True) -> pa.Table:
    """(user, rank, item, score) rows in original ids; train items are never recommended."""
    train = ds.split_csr("train")
    users = users_with_rows(train)
    k = min(k, ds.n_items)
    out_u, out_i, out_s = [], [], []
    for start in tqdm(range(0, len(users), batch_size), desc="scoring", disable=not progress, unit="batch"):
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


def write_recommendations(run_dir: str | Path, out: str | Path, k: int = 20,
                          dataset: str | None = None, device: str = "cpu") -> str:
    """Write the top-K table to `out` (local path or URI); returns where it went."""
    model, _, ds = load_best_model(run_dir, dataset, device)
    table = top_k_table(model, ds, k, device=device)
    storage.make_dirs(storage.parent_of(out))
    fs, path = storage.filesystem(out)
    pq.write_table(table, path, filesystem=fs)
    return storage.normalize(out)
