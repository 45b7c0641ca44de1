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


# ---------------------------------------------------------------- the command line


def test_help_lists_every_config_key_with_its_type_default_and_meaning(capsys):
    import dataclasses

    from ld4mrec_dist.config import STRATEGIES, Config

    with pytest.raises(SystemExit):
        _job("train").main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            key = f"{section.name}.{f.name}"
            line = next((row for row in lines if row.split()[:1] == [key]), None)
            assert line is not None, f"{key} missing from --help"
            assert len(line.split()) >= 4, f"{key}: type, default and meaning expected: {line!r}"
    row = next(r for r in lines if r.split()[:1] == ["train.lr"]).split()
    assert row[1:3] == ["float", "0.001"] and row[3] == "Adam's"
    assert next(r for r in lines if r.split()[:1] == ["data.path"]).split()[1:3] == ["str", '""']
    strategy = next(r for r in lines if r.split()[:1] == ["scaling.strategy"])
    assert all(name in strategy for name in STRATEGIES), f"--help should list the choices: {strategy!r}"


def test_print_config_resolves_file_and_overrides_given_after_flags_and_runs_nothing(tmp_path, capsys):
    import yaml

    code = _job("train").main(["--config", str(REPO / "jobs" / "configs" / "baby.yaml"), "train.lr=0.0005",
                               "--print-config", f"run.storage={tmp_path / 'runs'}"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["synthetic"] == "baby" and printed["train"]["lr"] == 0.0005
    assert not (tmp_path / "runs").exists()


def test_overrides_after_resume_are_applied(tiny_run, capsys):
    import yaml

    run_dir, _ = tiny_run
    assert _job("train").main(["--resume", str(run_dir), "eval.batch_size=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["eval"]["batch_size"] == 7 and printed["run"]["resume"] == str(run_dir)
    assert printed["train"]["epochs"] == 2  # the run's own config.yaml is the base


def test_every_example_config_loads_and_every_config_a_job_names_exists():
    import re

    from ld4mrec_dist.config import load_config

    configs = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
    named = {m for job in (REPO / "jobs").glob("*.py") for m in re.findall(r"jobs/configs/[\w/.-]+\.yaml",
                                                                            job.read_text())}
    assert named and all((REPO / m).is_file() for m in named), named


def test_a_relative_data_path_in_a_ray_job_names_how_it_was_resolved_and_the_fix(tmp_path, monkeypatch, capsys):
    working_copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    working_copy.mkdir(parents=True)
    monkeypatch.chdir(working_copy)  # where `ray job submit --working-dir .` runs the script
    monkeypatch.setenv("LD4MREC_HOME", str(tmp_path / "home"))
    assert _job("train").main(["data.path=data/mine-clean", "scaling.num_workers=0"]) == 2
    err = capsys.readouterr().err
    assert f"data.path=data/mine-clean resolved to {tmp_path / 'home' / 'data' / 'mine-clean'}" in err
    assert "no manifest.json" in err and "$LD4MREC_HOME" in err
    assert "absolute path" in err and "shared storage" in err and "--runtime-env-json" in err


# ---------------------------------------------------------------- tracking


def test_the_run_writes_tensorboard_events_with_losses_metrics_lr_and_step_timings(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tiny_run
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/train", "valid/recall@20", "valid/ndcg@10", "test/recall@20", "lr", "step/loss",
                "step/lr", "step/time_s", "time/train_epoch_s", "throughput/users_per_s"):
        assert tag in tags, tag
    assert any(t.startswith("step_time_ms/") for t in tags)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("valid/recall@20")
    assert [e.step for e in logged] == [r["step"] for r in metrics]
    assert [e.value for e in logged] == pytest.approx([r["valid/recall@20"] for r in metrics])
    assert len(events.Scalars("step/loss")) == metrics[-1]["step"]  # one point per optimiser step


# ---------------------------------------------------------------- recommend


def _item_file(path: Path, item_ids) -> Path:
    """A RecBole .item file: typed headers, a title for every item but the last."""
    lines = ["item_id:token\ttitle:token_seq\tyear:token"]
    lines += [f"{item}\tTitle {item}\t{1990 + n}" for n, item in enumerate(item_ids[:-1])]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_recommend_for_chosen_users_joins_item_columns_and_prints_the_first_rows(tiny_run, tmp_path, capsys):
    run_dir, data_root = tiny_run
    ds = open_dataset(next(p for p in data_root.iterdir() if p.name.startswith("tiny-clean")))
    users = [str(ds.user_ids[3]), str(ds.user_ids[0])]
    items = _item_file(tmp_path / "tiny.item", [str(i) for i in ds.item_ids])
    out = tmp_path / "top3.parquet"
    code = _job("recommend").main([str(run_dir), "--k", "3", "--users", *users, "--items", str(items),
                                   "--item-columns", "title", "year", "--out", str(out)])
    assert code == 0
    recs = pq.read_table(out).to_pandas()
    assert list(recs.columns) == ["user", "rank", "item", "score", "title", "year"]
    assert list(dict.fromkeys(recs["user"])) == users and len(recs) == 6
    titled = recs[recs["item"] != str(ds.item_ids[-1])]
    assert (titled["title"] == "Title " + titled["item"]).all()
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["user", "rank", "item", "score", "title", "year"]
    assert f"Title {recs['item'][0]}" in printed and "6 rows" in printed

    listed = tmp_path / "users.txt"
    listed.write_text(f"# users to score\n{users[1]}\n")
    assert _job("recommend").main([str(run_dir), "--k", "2", "--users-file", str(listed),
                                   "--out", str(tmp_path / "one.parquet")]) == 0
    assert set(pq.read_table(tmp_path / "one.parquet").column("user").to_pylist()) == {users[1]}

    # Without --out, a lookup of a few users gets a name of its own: the all-users export stays.
    everyone = run_dir / "top2.parquet"
    everyone.write_bytes(b"the all-users export")
    try:
        assert _job("recommend").main([str(run_dir), "--k", "2", "--users", users[0]]) == 0
        assert everyone.read_bytes() == b"the all-users export"
        assert set(pq.read_table(run_dir / "top2-users.parquet").column("user").to_pylist()) == {users[0]}
    finally:
        everyone.unlink()
        (run_dir / "top2-users.parquet").unlink(missing_ok=True)


def test_recommend_names_unknown_users_and_columns(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    assert _job("recommend").main([str(run_dir), "--users", "no-such-user"]) == 2
    assert "no-such-user" in capsys.readouterr().err
    items = _item_file(tmp_path / "x.item", ["a", "b"])
    assert _job("recommend").main([str(run_dir), "--items", str(items), "--item-columns", "genre"]) == 2
    assert "no column 'genre'" in capsys.readouterr().err
    assert _job("recommend").main([str(run_dir), "--item-columns", "title"]) == 2
    assert "--item-columns needs --items" in capsys.readouterr().err


# ---------------------------------------------------------------- Python entry point


def test_train_run_from_python_returns_the_run_dir_and_final_metrics_and_ends_on_the_table(tmp_path, capfd):
    from ld4mrec_dist.api import train_run

    result = train_run(overrides={**dict(o.split("=") for o in TINY), "train.epochs": 1,
                                               "data.root": str(tmp_path / "data"),
                                               "run.storage": str(tmp_path / "runs"), "run.name": "nb"})
    assert result.run_dir == str(tmp_path / "runs" / "nb")
    assert result.final_metrics == json.loads((tmp_path / "runs" / "nb" / "final_metrics.json").read_text())
    assert result.final_metrics["epochs_run"] == 1 and "recall@20" in result.final_metrics["test"]
    out = capfd.readouterr().out.rstrip().splitlines()
    assert out[-1].split()[0] == "test" and out[-4].split()[:2] == ["split", "recall@10"]  # the table ends it
    assert any(line.startswith("[ld4mrec] config, changed from the defaults: data.synthetic=tiny") for line in out)
