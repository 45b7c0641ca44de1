"""Tiny CSV/TSV/Parquet interaction logs covering the protocol's branches, and the manifest
sha256 each gave when prepared by the in-memory path before the streaming path existed
(`expected_manifest_hashes.json`, recorded with `python -m tests.data_pipeline.prepare_inputs`).

Every case is built from fixed numbers, so its files are byte-identical on every run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.protocol import ProtocolConfig
from data_pipeline.readers.tabular import ColumnMap, FeatureFile

EXPECTED = Path(__file__).with_name("expected_manifest_hashes.json")


@dataclass(frozen=True)
class Case:
    write: Callable[[Path], Path]
    """Writes the input files into a folder; returns the interaction file (or folder)."""
    setting: str
    columns: ColumnMap = ColumnMap()
    features: Callable[[Path], tuple[FeatureFile, ...]] = lambda folder: ()
    rows_per_shard: int = 8192
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    seed: int = 2024


def cli_csv(folder: Path) -> Path:
    """The jobs/prepare.py test's log: 4 users x 10 items, all rated 5."""
    lines = ["u,i,r,t"] + [f"{u},{i},5,{k}" for u in range(4) for k, i in enumerate(range(u, u + 10))]
    (folder / "r.csv").write_text("\n".join(lines) + "\n")
    return folder / "r.csv"


def cli_noisy_csv(folder: Path) -> Path:
    """The jobs/prepare.py noise test's log: 12 users x 20 items, ratings 1..5."""
    lines = ["u,i,r,t"] + [f"{u},{i},{1 + (i + u) % 5},{k}" for u in range(12) for k, i in enumerate(range(u, u + 20))]
    (folder / "r.csv").write_text("\n".join(lines) + "\n")
    return folder / "r.csv"


def random_log(n_users: int, n_items: int, n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Integer ids with duplicates, time ties and every rating 1..5."""
    rng = np.random.default_rng(seed)
    return {"user_id": rng.integers(0, n_users, n_rows), "item_id": rng.integers(0, n_items, n_rows),
            "rating": rng.integers(1, 6, n_rows), "timestamp": rng.integers(0, n_rows // 3, n_rows)}


def write_csv(folder: Path, cols: dict[str, np.ndarray], name: str = "log.csv", sep: str = ",") -> Path:
    names = list(cols)
    lines = [sep.join(names)] + [sep.join(str(cols[c][r]) for c in names) for r in range(len(cols[names[0]]))]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def mixed_csv(folder: Path) -> Path:
    """String user ids (not all integers: string order), padded ids, ties, duplicates."""
    log = random_log(9, 15, 160, seed=1)
    names = np.array(["alice", "bob", "carol", "dave", " eve", "frank", "grace", "heidi", "ivan"])
    return write_csv(folder, {"who": names[log["user_id"]], "what": log["item_id"] + 100,
                              "stars": log["rating"], "when": log["timestamp"]})


def no_time_csv(folder: Path) -> Path:
    """No timestamp column: chronology is input row order."""
    log = random_log(7, 12, 120, seed=2)
    return write_csv(folder, {"user_id": log["user_id"], "item_id": log["item_id"], "rating": log["rating"]})


def no_rating_tsv(folder: Path) -> Path:
    """No rating column (clean keeps every row), tab-separated."""
    log = random_log(8, 11, 130, seed=3)
    return write_csv(folder, {"user_id": log["user_id"], "item_id": log["item_id"], "timestamp": log["timestamp"]},
                     name="log.tsv", sep="\t")


def split_csv(folder: Path) -> Path:
    """A source split column with word labels."""
    log = random_log(10, 14, 200, seed=4)
    labels = np.array(["train"] * 8 + ["valid", "test"])[np.random.default_rng(5).integers(0, 10, 200)]
    return write_csv(folder, {**{k: log[k] for k in ("user_id", "item_id", "rating", "timestamp")}, "part": labels})


def parquet_log(folder: Path) -> Path:
    """Parquet with native integer ids, float ratings and timestamp-typed times; 25 users."""
    log = random_log(25, 30, 700, seed=6)
    table = pa.table({"user_id": log["user_id"], "item_id": log["item_id"], "rating": log["rating"].astype(float),
                      "timestamp": pa.array(log["timestamp"] * 1000, pa.timestamp("ms"))})
    pq.write_table(table, folder / "log.parquet")
    return folder / "log.parquet"


def npy_features(folder: Path) -> tuple[FeatureFile, ...]:
    np.save(folder / "image.npy", np.arange(30 * 3, dtype=np.float32).reshape(30, 3))
    return (FeatureFile("image", folder / "image.npy"),)


def keyed_features(folder: Path) -> tuple[FeatureFile, ...]:
    pq.write_table(pa.table({"item_id": [str(i + 100) for i in range(15)],
                             "vec": [[float(i), float(-i)] for i in range(15)]}), folder / "text.parquet")
    return (FeatureFile("text", folder / "text.parquet"),)


MIXED = ColumnMap("who", "what", "stars", "when")
CASES: dict[str, Case] = {
    "cli-clean": Case(cli_csv, "clean", ColumnMap("u", "i", "r", "t")),
    "cli-noisy30": Case(cli_noisy_csv, "noisy", ColumnMap("u", "i", "r", "t"),
                        protocol=ProtocolConfig(noise_ratio=0.3)),
    "cli-clean-ratings": Case(cli_noisy_csv, "clean", ColumnMap("u", "i", "r", "t")),
    "cli-as_is": Case(cli_noisy_csv, "as_is", ColumnMap("u", "i", "r", "t"), rows_per_shard=5),
    "mixed-clean": Case(mixed_csv, "clean", MIXED, keyed_features, rows_per_shard=2),
    "mixed-as_is": Case(mixed_csv, "as_is", MIXED, keyed_features),
    "mixed-noisy": Case(mixed_csv, "noisy", MIXED, keyed_features, seed=7),
    "mixed-clean-ratios": Case(mixed_csv, "clean", MIXED, protocol=ProtocolConfig(min_rating=3.0,
                                                                                  split_ratios=(0.6, 0.2, 0.2))),
    "no-time-clean": Case(no_time_csv, "clean", rows_per_shard=3),
    "no-time-as_is": Case(no_time_csv, "as_is"),
    "no-rating-clean": Case(no_rating_tsv, "clean", rows_per_shard=4),
    "split-clean": Case(split_csv, "clean", ColumnMap(split="part"), rows_per_shard=4),
    "split-as_is": Case(split_csv, "as_is", ColumnMap(split="part")),
    "split-noisy": Case(split_csv, "noisy", ColumnMap(split="part")),
    "parquet-clean": Case(parquet_log, "clean", features=npy_features, rows_per_shard=7),
    "parquet-as_is": Case(parquet_log, "as_is", features=npy_features),
    "parquet-noisy": Case(parquet_log, "noisy", features=npy_features),
}


def prepare_in_memory(case: Case, folder: Path) -> Path:
    """The case prepared by reading the whole log (`read_tabular`) and `prepare_dataset`."""
    from data_pipeline.prepare import prepare_dataset
    from data_pipeline.readers.tabular import read_tabular

    inter = case.write(folder)
    source = read_tabular(inter, case.columns, case.features(folder))
    return Path(prepare_dataset(source, case.setting, folder / "ds", seed=case.seed, rows_per_shard=case.rows_per_shard,
                                protocol=case.protocol, progress=False))


def manifest_sha256(dataset: Path) -> str:
    return hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()


SYNTHETIC = ("clean", "noisy", "as_is")
"""Settings of the synthetic tiny MMRec source (the in-memory path's own input) also recorded."""


def prepare_synthetic_tiny(setting: str, root: Path) -> Path:
    from data_pipeline.prepare import prepare_synthetic

    return prepare_synthetic("tiny", setting, root, progress=False)


def record() -> dict[str, str]:
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            folder = Path(tmp) / name
            folder.mkdir()
            hashes[name] = manifest_sha256(prepare_in_memory(case, folder))
        for setting in SYNTHETIC:
            hashes[f"synthetic-tiny-{setting}"] = manifest_sha256(prepare_synthetic_tiny(setting, Path(tmp)))
    return hashes


if __name__ == "__main__":
    recorded = record()
    EXPECTED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    json.dump(recorded, sys.stdout, indent=1)
