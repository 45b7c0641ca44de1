"""What a rank holds (ld4mrec_dist/train/rank_model.py), through the trainer's own setup and
loop: on 2 gloo ranks with scaling.strategy=item_parallel and model.svd_solver=distributed,
every model a rank constructs is item-sharded (the whole C-Net never exists), its item
layers are the sharded build's draws, its V_k, features and degrees are its slice, and
V_k is the distributed SVD's of the train matrix (the driver fits none; rank 0 writes the
gathered V_k, which a restart reads back). In one process the distributed solver's V_k
is the one svd_dist computes, and the default solver's run is unchanged."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.harness import free_port, gloo_spawn
from data_pipeline.dataset import open_dataset
from data_pipeline.prepare import prepare_synthetic
from ld4mrec_dist.config import load_config
from ld4mrec_dist.svd_dist import distributed_item_factors
from ld4mrec_dist.train.rank_model import fit_here
from ld4mrec_dist.train.trainer import prepare_run, run_training

D, K = 16, 4


def _overrides(data: Path, tmp: Path, name: str, *more: str) -> list[str]:
    return [f"data.path={data}", f"run.storage={tmp / 'runs'}", f"run.name={name}", f"model.hidden={D}",
            f"model.svd_rank={K}", "train.epochs=1", "train.batch_size=64", "model.svd_solver=distributed", *more]


def _rank(rank: int, world: int, worker_input: dict) -> dict:
    """The trainer's setup and one epoch on this rank, recording every LD4MRec it constructs."""
    from ld4mrec_dist.model import LD4MRec
    from ld4mrec_dist.parallel.build import FC_IN, FC_OUT, xavier_rows
    from ld4mrec_dist.parallel.item import local_tensor
    from ld4mrec_dist.train.context import InProcessWorker
    from ld4mrec_dist.train.loop import WorkerInput, setup, train_epochs

    warnings.simplefilter("ignore")
    built: list[object] = []
    init = LD4MRec.__init__

    def recording_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(kwargs.get("item_range"))
        init(self, *args, **kwargs)

    LD4MRec.__init__ = recording_init  # type: ignore[method-assign]
    run = setup(WorkerInput.from_dict(worker_input), InProcessWorker())
    model, (lo, hi) = run.model, run.model.item_range
    seed, n_items = run.cfg.train.seed, model.n_items
    fc_in, fc_out = local_tensor(model.cnet.fc_in.weight), local_tensor(model.cnet.fc_out.weight)
    shards = {"fc_in": tuple(fc_in.shape), "fc_out": tuple(fc_out.shape),
              "fc_in_drawn": torch.equal(fc_in, xavier_rows(n_items, D, lo, hi, seed, FC_IN).T),
              "fc_out_drawn": torch.equal(fc_out, xavier_rows(n_items, D, lo, hi, seed, FC_OUT))}
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers() if n.startswith("item_")}
    v_LK = model.item_factors.numpy().copy()
    out = train_epochs(run)
    run.tracker.close()
    return {"built": built, "range": (lo, hi), "shards": shards, "buffers": buffers, "v": v_LK,
            "loss": run.state.history[-1]["loss"], "fingerprints": out["replica_fingerprints"]}


def _projector(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return v @ np.linalg.pinv(v)


@pytest.fixture(scope="module")
def item_parallel_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank_model")
    data = prepare_synthetic("tiny", "clean", tmp / "data", progress=False)
    cfg = load_config(overrides=_overrides(data, tmp, "ip", "scaling.num_workers=2",
                                           "scaling.strategy=item_parallel"))
    prepared = prepare_run(cfg)
    driver_fitted = (prepared.run_dir / "item_factors.npy").exists()
    ranks = gloo_spawn(_rank, 2, (prepared.worker.as_dict(),), free_port())
    return {"data": data, "tmp": tmp, "run_dir": prepared.run_dir, "ranks": ranks, "driver_fitted": driver_fitted}


def test_item_parallel_rank_never_builds_the_whole_model(item_parallel_run):
    ranks = item_parallel_run["ranks"]
    n_items = open_dataset(item_parallel_run["data"]).n_items
    assert [r["range"] for r in ranks] == [(0, -(-n_items // 2)), (-(-n_items // 2), n_items)]
    for r in ranks:
        lo, hi = r["range"]
        assert r["built"] == [(lo, hi)]  # one LD4MRec, sharded from its construction
        assert r["shards"] == {"fc_in": (D, hi - lo), "fc_out": (hi - lo, D), "fc_in_drawn": True,
                               "fc_out_drawn": True}
        assert r["buffers"]["item_factors"] == (hi - lo, K) and r["buffers"]["item_degree"] == (hi - lo,)
        assert all(shape[0] == hi - lo for name, shape in r["buffers"].items() if name.startswith("item_feature_")
                   and len(shape) == 2)
        assert np.isfinite(r["loss"]) and r["loss"] > 0
    assert ranks[0]["fingerprints"][0] == ranks[0]["fingerprints"][1]


def test_distributed_solver_vk_is_the_distributed_svd_of_the_train_matrix(item_parallel_run):
    run_dir, ranks = item_parallel_run["run_dir"], item_parallel_run["ranks"]
    assert not item_parallel_run["driver_fitted"]  # the driver fitted nothing
    written = np.load(run_dir / "item_factors.npy")
    assert np.array_equal(written, np.concatenate([r["v"] for r in ranks]))  # rank 0 wrote the slices gathered
    ds = open_dataset(item_parallel_run["data"])
    one_process = distributed_item_factors(ds.split_csr("train"), K, load_config().train.seed)
    np.testing.assert_allclose(_projector(written), _projector(one_process), atol=1e-4)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["valid/recall@20"] > 0


def test_distributed_solver_in_process_fits_once_and_reads_back(item_parallel_run, capsys):
    """num_workers=0: the rank's V_k is svd_dist's, written once; a rank that starts again
    (a restart, a --resume) reads it back instead of fitting."""
    data, tmp = item_parallel_run["data"], item_parallel_run["tmp"]
    cfg = load_config(overrides=_overrides(data, tmp, "w0", "scaling.num_workers=0"))
    result = run_training(cfg)
    assert capsys.readouterr().out.count("distributed randomized SVD") == 1
    ds = open_dataset(data)
    written = np.load(result.run_dir / "item_factors.npy")
    expected = distributed_item_factors(ds.split_csr("train"), K, load_config().train.seed)
    assert np.array_equal(written, expected)
    assert not fit_here(cfg, str(result.run_dir)) and fit_here(cfg, str(tmp / "elsewhere"))
