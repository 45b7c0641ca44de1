"""The one-command GPU check (benchmarks/gpu_check.py) as a dry run on the CPU (`--device cpu
--tiny`): every part runs its code paths in its own child process and reports rows with
finite figures, the item-parallel step gives the data-parallel loss, the summary names every
row; a failing part is reported while the next one still runs, and a part over its budget is
stopped. The Ray part (`throughput.full_path`: the trainer's own path, which tests/e2e run
through Ray Train) is left out of the dry run: it alone took 40 s of its 90 s here.
`python benchmarks/gpu_check.py --device cpu --tiny --only ray` runs it."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, *extra: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    path = out / "gpu_check.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return proc, rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc, rows = _run(out, "--data-root", str(out / "data"), "--skip", "ray")
    return proc, rows, out


def _status(rows: list[dict]) -> dict[str, str]:
    return {r["part"]: r["status"] for r in rows if r["name"] == f"part {r['part']}"}


@pytest.mark.slow
def test_every_part_runs_and_reports_finite_figures(dry_run):
    proc, rows, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    parts = [p for p in gpu_check.PARTS if p != "ray"]
    assert _status(rows) == dict.fromkeys(parts, "ok")
    assert len({r["run_id"] for r in rows}) == 1
    for part in parts:
        measured = [r for r in rows if r["part"] == part and not r["name"].startswith("part ")]
        assert measured, part
        for r in measured:
            assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r
    names = {r["name"] for r in rows}
    assert any("train_step, after" in n for n in names)
    for r in rows:
        if r.get("unit") == "TFLOP/s" or r.get("tflops") is not None:
            assert r.get("tflops", r["value"]) > 0, r


@pytest.mark.slow
def test_item_parallel_gives_the_data_parallel_loss_and_ranking(dry_run):
    rows = dry_run[1]
    (loss,) = [r for r in rows if r["name"].startswith("item-parallel vs data-parallel step: loss")]
    assert loss["met"] and loss["value"] <= gpu_check.LOSS_RTOL, loss
    assert len(loss["losses"]) == gpu_check.TINY.compare_steps
    assert loss["params_max_abs_diff"] <= 1e-5
    (ranking,) = [r for r in rows if r["name"].startswith("item-parallel vs data-parallel ranking")]
    assert ranking["value"] <= 1e-9, ranking
    timed = [r for r in rows if r["name"].startswith("item-parallel step, W_item = 1")]
    assert {r["precision"] for r in timed} == {"fp32", "bf16"}


@pytest.mark.slow
def test_summary_names_the_device_and_every_row(dry_run):
    _, rows, out = dry_run
    summary = (out / "gpu_check.md").read_text()
    assert "no GPU (dry run on the CPU)" in summary and "torch " in summary
    for r in rows:
        assert r["name"].replace("|", "\\|") in summary, r["name"]
    assert "[gpu_check +" in (out / "gpu_check.log").read_text()


def test_a_failing_part_is_reported_and_the_next_one_runs(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    proc, rows = _run(tmp_path / "out", "--only", "data", "roofline", "--data-root", str(not_a_dir), timeout=300)
    assert proc.returncode == 1
    assert _status(rows) == {"data": "failed", "roofline": "ok"}
    assert [r["part"] for r in rows if r["name"].startswith("part ")] == ["data", "roofline"]
    (failed,) = [r for r in rows if r["name"].startswith("data: failed")]
    assert failed["value"] is None and "Error" in failed["traceback"]
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "### part data: failed" in summary


def test_a_part_over_its_budget_is_stopped(tmp_path):
    args = argparse.Namespace(run_id="t", out=tmp_path, device="cpu", data_root=tmp_path, tiny=True)
    log = gpu_check.Log(tmp_path / "log")
    try:
        status, rc, _ = gpu_check.run_child("roofline", args, 0.5, log)
    finally:
        log.close()
    assert (status, rc) == ("timed out", None)
