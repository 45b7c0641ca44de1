"""The driver prepares a run once for every rank: the strategy (`auto` included) resolved in
the driver, the worker's input a dataclass that survives Ray's plain-dict hand-over, and
one decision between in-process and Ray Train."""

from __future__ import annotations

from data_pipeline.prepare import prepare_synthetic
from ld4mrec_dist.config import load_config
from ld4mrec_dist.scaling_model import resolve_strategy
from ld4mrec_dist.strategy import WIRED
from ld4mrec_dist.train.loop import WorkerInput
from ld4mrec_dist.train.resources import rank_count, runs_in_process
from ld4mrec_dist.train.trainer import prepare_run


def test_prepare_run_resolves_auto_once_for_every_rank(tmp_path):
    data = prepare_synthetic("tiny", "clean", tmp_path / "data", progress=False)
    cfg = load_config(overrides=[f"data.path={data}", f"run.storage={tmp_path / 'runs'}", "run.name=r",
                                 "model.hidden=16", "model.svd_rank=4", "scaling.num_workers=2",
                                 "scaling.strategy=auto"])
    prepared = prepare_run(cfg)
    given = prepared.worker
    assert given.strategy in WIRED  # a runnable name, never "auto": the workers do not resolve it again
    assert given.strategy == resolve_strategy(cfg, prepared.ds.n_items, 2, prepared.ds.feature_dims)[0]
    assert (given.dataset, given.run_dir, given.resume_from) == (prepared.ds.location, str(prepared.run_dir), "")
    assert WorkerInput.from_dict(given.as_dict()) == given  # Ray Train hands it over as a dict
    assert (prepared.run_dir / "config.yaml").is_file() and (prepared.run_dir / "item_factors.npy").is_file()


def test_a_clamped_svd_rank_is_said_in_the_start_up_line(tmp_path, capsys):
    data = prepare_synthetic("tiny", "clean", tmp_path / "data", progress=False)   # 100 users × 60 items
    cfg = load_config(overrides=[f"data.path={data}", f"run.storage={tmp_path / 'runs'}", "run.name=r",
                                 "model.hidden=16", "model.svd_rank=64", "scaling.num_workers=0"])
    prepare_run(cfg)
    assert "randomized SVD (k=59; model.svd_rank=64 exceeds min(users, items) − 1)" in capsys.readouterr().out


def test_zero_workers_is_the_one_in_process_case():
    assert runs_in_process(load_config(overrides=["scaling.num_workers=0"]))
    assert not runs_in_process(load_config(overrides=["scaling.num_workers=1"]))
    assert rank_count(load_config(overrides=["scaling.num_workers=0"])) == 1
    assert rank_count(load_config(overrides=["scaling.num_workers=3"])) == 3
