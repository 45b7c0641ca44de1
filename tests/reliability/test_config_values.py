"""Every number and name of the configuration is checked when it is loaded: a value that
would fail deep inside a run (or run for ever, or write outside run.storage) is one line
naming the field and the rule."""

from __future__ import annotations

import pytest

from ld4mrec_dist.config import ConfigError, load_config


@pytest.mark.parametrize(("override", "rule"), [
    ("train.lr=inf", "train.lr=inf: must be a finite number > 0"),
    ("train.weight_decay=-1", "train.weight_decay=-1.0: must be a finite number ≥ 0"),
    ("train.weight_decay=nan", "train.weight_decay=nan: must be a finite number ≥ 0"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0: must be a finite number ≥ 0 (0: no clipping)"),
    ("train.seed=-1", "train.seed=-1: must be in [0, 2**32)"),
    ("data.seed=4294967296", "data.seed=4294967296: must be in [0, 2**32)"),
    ("train.fail_at_step=-2", "train.fail_at_step=-2: must be ≥ -1"),
    ("eval.batch_size=0", "eval.batch_size=0: must be ≥ 1"),
    ("model.negative_slope=nan", "model.negative_slope=nan: must be a finite number"),
    ("model.stage_slope=inf", "model.stage_slope=inf: must be a finite number"),
    ("scaling.cpus_per_worker=inf", "scaling.cpus_per_worker=inf: must be a finite number > 0"),
    ("scaling.wait_for_resources_s=inf", "scaling.wait_for_resources_s=inf: must be a finite number ≥ 0"),
    ("scaling.max_failures=-1", "scaling.max_failures=-1: must be ≥ 0"),
    ("scaling.lost_node_wait_s=inf", "scaling.lost_node_wait_s=inf: must be a finite number ≥ 0"),
])
def test_numeric_fields_are_checked_at_load_time(override, rule):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert rule in str(err.value) and "\n" not in str(err.value)


ESCAPING = "/".join(["..", "..", "escaped"])  # two levels above run.storage


@pytest.mark.parametrize("name", [ESCAPING, "/abs/path", "a/b", "..", ".", "a\\b"])
def test_run_name_that_is_a_path_is_refused(name):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"run.name={name}"])
    msg = str(err.value)
    assert msg.startswith(f"run.name={name!r}: a run name is one folder name inside run.storage") and "'..'" in msg


def test_ordinary_values_still_load():
    cfg = load_config(overrides=["run.name=ml1m-lr3e-4_v2.1", "train.grad_clip=0", "scaling.max_failures=0",
                                 "train.weight_decay=0", "train.seed=0"])
    assert cfg.run.name == "ml1m-lr3e-4_v2.1" and cfg.scaling.max_failures == 0


def test_a_run_name_that_is_a_path_never_reaches_the_disk(job, tiny_data, tmp_path, capsys):
    """The job refuses before it writes anything, inside or outside run.storage."""
    runs = tmp_path / "deep" / "runs"
    code = job("train").main([f"data.path={tiny_data}", f"run.storage={runs}", f"run.name={ESCAPING}",
                              "scaling.num_workers=0", "train.epochs=1"])
    assert code == 2 and f"run.name={ESCAPING!r}" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not runs.exists()
