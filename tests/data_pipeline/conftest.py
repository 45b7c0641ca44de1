"""Fixture writers for the data-pipeline tests: tiny MMRec / RecBole / CSV files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipeline.synthetic import generate_mmrec


def write_inter(path: Path, header: str, rows: list[tuple]) -> Path:
    """A tab-separated file with a header line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join("\t".join(str(v) for v in r) + "\n" for r in rows))
    return path


def mmrec_rows(n_users: int = 6, n_items: int = 8, per_user: int = 10, seed: int = 0) -> list[tuple]:
    """(user, item, rating, timestamp) rows: per_user distinct items per user, timestamps increasing."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.permutation(n_items)[:per_user] if per_user <= n_items else rng.integers(0, n_items, per_user)
        for k, i in enumerate(items):
            rows.append((u, int(i), int(rng.integers(1, 6)), 1000 + 10 * k + u))
    return rows


@pytest.fixture
def make_mmrec(tmp_path):
    """Factory: an MMRec folder with `name.inter` and text/image features; returns the folder."""

    def make(rows=None, header="userID\titemID\trating\ttimestamp", n_items=None, widths=(3, 5), name="toy",
             features=None):
        folder = tmp_path / f"mmrec-{name}"
        rows = rows if rows is not None else mmrec_rows(n_items=n_items or 12)
        write_inter(folder / f"{name}.inter", header, rows)
        n = n_items or (max(int(r[1]) for r in rows) + 1)
        rng = np.random.default_rng(1)
        feats = features or {"text": rng.normal(size=(n, widths[0])), "image": rng.normal(size=(n, widths[1]))}
        for m, arr in feats.items():
            np.save(folder / f"{m}_feat.npy", np.asarray(arr, np.float32))
        return folder

    return make


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """The synthetic `tiny` MMRec source, generated once per session."""
    return generate_mmrec("tiny", tmp_path_factory.mktemp("synthetic") / "raw", seed=7, progress=False)


@pytest.fixture
def tsv():
    """The `write_inter(path, header, rows)` helper."""
    return write_inter
