"""MMRec format: `<name>.inter` (TSV `userID itemID rating timestamp x_label`) + `<m>_feat.npy`.

Ids are already 0-based integers; itemID is the feature row. `x_label` (0/1/2 =
train/valid/test) is optional: without it the protocol splits chronologically. Modalities
are every `<m>_feat.npy` beside the .inter file: text, image, then others by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.features import npy_feature
from data_pipeline.source import Source, numeric_column, read_delimited, require_columns

COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
MODALITY_ORDER = ("text", "image")


def find_inter(path: Path, name: str | None = None, source: str = "MMRec") -> Path:
    """The .inter file at `path` (a file, or a directory holding exactly one or `<name>.inter`);
    `source` names the format in the error."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory; pass the {source} dataset's directory or its .inter file")
    if name:
        inter = path / f"{name}.inter"
        if not inter.is_file():
            raise DataError(f"{inter}: not found; check --name")
        return inter
    found = sorted(path.glob("*.inter"))
    if len(found) != 1:
        raise DataError(f"{path}: expected exactly one *.inter file, found {[f.name for f in found]}; "
                        "pass --name to choose")
    return found[0]


def modality_files(folder: Path) -> dict[str, Path]:
    """Modality name -> `<name>_feat.npy`, text first, then image, then the rest by name."""
    files = {p.name[: -len("_feat.npy")]: p for p in folder.glob("*_feat.npy")}
    order = [m for m in MODALITY_ORDER if m in files] + sorted(set(files) - set(MODALITY_ORDER))
    return {m: files[m] for m in order}


def read_mmrec(path: str | Path, name: str | None = None) -> Source:
    """Parse an MMRec dataset; DataError for missing columns, bad ids or mismatched features."""
    inter = find_inter(Path(path), name)
    table = read_delimited(inter, "\t", quote=False)
    require_columns(inter, table.column_names, ["userID", "itemID"],
                    "MMRec .inter files are tab-separated with header userID, itemID, rating, timestamp, x_label.")
    cols = {c: table.column(c) for c in COLUMNS if c in table.column_names}
    users = numeric_column(inter, "userID", cols["userID"], integer=True, nonnegative=True)
    items = numeric_column(inter, "itemID", cols["itemID"], integer=True, nonnegative=True)
    if items.size == 0:
        raise DataError(f"{inter}: holds no interactions")
    rating = numeric_column(inter, "rating", cols["rating"]) if "rating" in cols else None
    timestamp = numeric_column(inter, "timestamp", cols["timestamp"]) if "timestamp" in cols else None
    split = None
    if "x_label" in cols:
        split = numeric_column(inter, "x_label", cols["x_label"], integer=True)
        bad = (split < 0) | (split > 2)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{inter}: column 'x_label', line {row + 2}: value {split[row]} is not "
                            "0/1/2 (train/valid/test); fix the label or drop the column")
        split = split.astype(np.int8)
    n_items = int(items.max()) + 1
    features = {m: npy_feature(m, p) for m, p in modality_files(inter.parent).items()}
    for feat in features.values():
        if feat.n_rows != n_items:
            raise DataError(f"{feat.path}: {feat.n_rows} feature rows but {inter.name} has {n_items} items "
                            f"(largest itemID {n_items - 1}); MMRec needs one row per item index 0..{n_items - 1}")
    return Source(name=inter.stem, format="mmrec", user_raw=users, item_N=items,
                  item_ids=np.arange(n_items).astype(str), rating=rating, timestamp=timestamp, split=split,
                  features=features, files=[inter] + [f.path for f in features.values()])
