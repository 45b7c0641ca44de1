"""A Ray run's console: the project's lines shown, Ray's and the workers' other output in run.log."""

from __future__ import annotations

import io

from ld4mrec_dist.train.console import RunConsole, route_ray_output, unseen_epoch_rows

RAYLET_DUMP = ["Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL",
               "Last 20 lines of the Raylet logs:", "    [2026-12-05 07:47:09,336 I 1 1] main.cc:123: ..."]


def test_own_lines_reach_the_console_without_rays_prefix_and_the_rest_goes_to_the_log(tmp_path):
    out = io.StringIO()
    console = RunConsole(tmp_path, out)
    console.handle({"pid": 42, "actor_name": "RayTrainWorker", "is_err": False,
                    "lines": ["[ld4mrec] epoch    3  loss 0.04  valid recall@20 0.48",
                              "Traceback (most recent call last):"]})
    console.handle({"pid": "raylet", "is_err": True, "lines": RAYLET_DUMP})
    assert out.getvalue() == "[ld4mrec] epoch    3  loss 0.04  valid recall@20 0.48\n"
    log = (tmp_path / "run.log").read_text()
    assert "(RayTrainWorker pid=42) Traceback (most recent call last):" in log
    assert all(line in log for line in RAYLET_DUMP) and "[ld4mrec] epoch    3" in log
    assert console.last_epoch_shown == 3


def test_rows_the_console_never_showed_are_the_ones_after_the_last_epoch_line():
    history = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    assert unseen_epoch_rows(history, 2) == [{"epoch": 3}]
    assert unseen_epoch_rows(history, 3) == []


def test_rays_worker_output_and_its_error_messages_both_go_through_the_run_console(tmp_path, monkeypatch):
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", lambda data: print("ray printed", data))])
    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)
    out = io.StringIO()
    assert route_ray_output(RunConsole(tmp_path, out))
    dispatcher.emit({"pid": 7, "lines": ["[ld4mrec] epoch    1  loss 0.1", "a worker's warning"]})
    ray_worker.print_to_stdstream({"pid": "raylet", "lines": RAYLET_DUMP[:1], "is_err": False}, ignore_prefix=False)
    assert out.getvalue() == "[ld4mrec] epoch    1  loss 0.1\n"
    log = (tmp_path / "run.log").read_text()
    assert "(pid=7) a worker's warning" in log and f"(pid=raylet) {RAYLET_DUMP[0]}" in log
