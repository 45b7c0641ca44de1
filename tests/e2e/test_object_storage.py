"""Datasets and run directories on object storage (S3 through a local moto server)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from data_pipeline import storage
from data_pipeline.dataset import open_dataset
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.mmrec import read_mmrec
from data_pipeline.synthetic import generate_mmrec
from ld4mrec_dist.recommend import write_recommendations
from ld4mrec_dist.train.trainer import run_training

from .conftest import TINY_MODEL, make_config

pytestmark = pytest.mark.slow


def test_prepare_train_resume_and_recommend_on_s3(ray_local, s3_bucket, tmp_path):
    raw = generate_mmrec("tiny", tmp_path / "raw", seed=5, progress=False)
    data_uri = prepare_dataset(read_mmrec(raw), "clean", f"s3://{s3_bucket}/datasets/tiny", seed=5,
                               rows_per_shard=40, progress=False)
    ds = open_dataset(data_uri)
    assert ds.location == f"s3://{s3_bucket}/datasets/tiny" and len(ds.split_files("train")) == 3
    assert ds.split_files("train")[0].startswith("s3://")

    runs = f"s3://{s3_bucket}/runs"
    first = run_training(make_config(data_uri, runs, "s3run", *TINY_MODEL, "train.epochs=2",
                                     "scaling.num_workers=1"))
    assert first.run_dir == f"{runs}/s3run"
    listed = storage.list_dir(first.run_dir)
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "curves.png", "best_model.pt"):
        assert name in listed, name
    assert any(n.startswith("checkpoint_") for n in listed)  # Ray Train checkpoints on S3 too

    resumed = run_training(make_config(data_uri, runs, "s3run", *TINY_MODEL, "train.epochs=3",
                                       "scaling.num_workers=1", f"run.resume={first.run_dir}"))
    epochs = [json.loads(r)["epoch"] for r in storage.read_text(f"{first.run_dir}/metrics.jsonl").splitlines()]
    assert resumed.epochs_run == 3 and epochs == [1, 2, 3]

    out = write_recommendations(first.run_dir, f"{first.run_dir}/top5.parquet", k=5)
    fs, path = storage.filesystem(out)
    assert pq.read_table(path, filesystem=fs).num_rows == 5 * len(set(ds.split_csr("train").nonzero()[0]))
