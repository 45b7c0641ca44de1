"""The job scripts as a user calls them: in-process runs (0 workers) on tiny data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipeline.dataset import open_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic=tiny", "train.epochs=2", "train.batch_size=32", "model.hidden=32",
        "model.svd_rank=8", "scaling.num_workers=0"]


def _job(name):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    code = _job("train").main([*TINY, f"data.root={root / 'data'}", f"run.storage={root / 'runs'}", "run.name=r"])
    assert code == 0
    return root / "runs" / "r", root / "data"


def test_train_writes_every_output(tiny_run):
    run_dir, _ = tiny_run
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "curves.png", "best_model.pt",
                 "item_factors.npy"):
        assert (run_dir / name).is_file(), name
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["epochs_run"] == 2 and set(final["test"]) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20"}


def test_recommend_excludes_train_items_and_uses_original_ids(tiny_run, tmp_path):
    run_dir, data_root = tiny_run
    out = tmp_path / "top5.parquet"
    assert _job("recommend").main([str(run_dir), "--k", "5", "--out", str(out)]) == 0
    recs = pq.read_table(out).to_pandas()
    ds = open_dataset(next(p for p in data_root.iterdir() if p.name.startswith("tiny-clean")))
    train = ds.split_csr("train")
    index_of_user = {u: i for i, u in enumerate(ds.user_ids)}
    index_of_item = {it: i for i, it in enumerate(ds.item_ids)}
    u = np.array([index_of_user[x] for x in recs["user"]])
    i = np.array([index_of_item[x] for x in recs["item"]])
    assert not np.asarray(train[u, i]).any()
    assert recs.groupby("user")["rank"].max().max() == 5
    assert (recs.groupby("user")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_bad_override_is_a_clear_error(capsys):
    assert _job("train").main(["train.lr=abc"]) == 2
    assert "'abc'" in capsys.readouterr().err  # the message names the bad value
    assert _job("train").main(["model.ablation=foo"]) == 2
    assert "model.ablation='foo'" in capsys.readouterr().err


def test_recommend_on_missing_run_is_a_clear_error(tmp_path, capsys):
    assert _job("recommend").main([str(tmp_path), "--k", "3"]) == 2
    assert "best_model.pt not found" in capsys.readouterr().err


def test_resume_of_an_in_process_run_is_refused_clearly(tiny_run, capsys):
    # 0 workers run without Ray Train, hence without checkpoints to resume from.
    run_dir, _ = tiny_run
    assert _job("train").main(["--resume", str(run_dir)]) == 2
    assert "in-process runs do not checkpoint" in capsys.readouterr().err


def test_compare_writes_a_table_with_the_baseline(tmp_path):
    out = tmp_path / "cmp.md"
    code = _job("compare").main(["--smoke-test", "--variants", "none", "no_bg", "--out", str(out),
                                 f"data.root={tmp_path / 'data'}", f"run.storage={tmp_path / 'runs'}"])
    assert code == 0
    lines = out.read_text().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["most-popular", "LD4MRec", "LD4MRec no_bg"]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert all(0.0 <= r["test"]["recall@20"] <= 1.0 for r in rows)
