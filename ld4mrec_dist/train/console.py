"""What of a Ray run's output reaches the console: the project's own lines, nothing else.

Ray forwards every line its workers, actors and raylets print to the driver. The
project's lines (`[ld4mrec] …`, printed by rank 0) go to the console without Ray's
`(RayTrainWorker pid=…)` prefix; everything else (a raylet's "Raylet is terminated" dump,
the GCS's bundle errors, the tracebacks of every rank and retry) goes to the run's log
file, `run.log` in the run directory, with its prefix. So the driver's final one-line
error is the console's last line, and the detail is one file away.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any, TextIO

from data_pipeline import storage
from ld4mrec_dist.config import Config
from ld4mrec_dist.report import read_metrics
from ld4mrec_dist.run_dir import LOG_FILE, METRICS_FILE, RunDir, file_in
from ld4mrec_dist.train.loop import progress_line

OWN_MARK = "[ld4mrec]"
RAY_HANDLER = "ray_print_logs"  # the name Ray's driver gives its console handler
OUR_HANDLER = "ld4mrec_console"
EPOCH_LINE = re.compile(r"^\[ld4mrec\] epoch\s+(\d+)\s")


def is_own_line(line: str) -> bool:
    return line.lstrip().startswith(OWN_MARK)


def prefix(batch: dict[str, Any]) -> str:
    """Ray's `(name pid=…, ip=…)` line prefix of a forwarded batch."""
    name = batch.get("actor_name") or batch.get("task_name") or ""
    pid = batch.get("pid", "?")
    return f"({name} pid={pid}) " if name else f"(pid={pid}) "


class RunConsole:
    """Routes Ray's forwarded output of one run: own lines to `out`, the rest to the log.

    The log is appended to as lines come when the run directory is local; for an object
    store it is written whole by `close`."""

    def __init__(self, run_dir: RunDir, out: TextIO | None = None) -> None:
        self.run_dir = run_dir
        self.out = out or sys.stdout
        self.log_path = file_in(run_dir, LOG_FILE)
        self.local = not storage.is_uri(self.log_path)
        self.lines: list[str] = []  # the log, kept for object stores
        self.last_epoch_shown = 0
        self._lock = threading.Lock()

    def handle(self, batch: dict[str, Any]) -> None:
        """Ray's stream-dispatcher callback: one batch of lines from one process."""
        lead, lines = prefix(batch), batch.get("lines", [])
        if batch.get("pid") == "autoscaler":  # its status table every few seconds: only its events, as Ray does
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
        for line in lines:
            if is_own_line(line):
                self.show(line.strip())
            else:
                self.log(lead + line)

    def show(self, line: str) -> None:
        match = EPOCH_LINE.match(line)
        with self._lock:
            if match:
                self.last_epoch_shown = max(self.last_epoch_shown, int(match.group(1)))
            print(line, file=self.out, flush=True)
        self.log(line)

    def log(self, text: str) -> None:
        with self._lock:
            if self.local:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(text.rstrip("\n") + "\n")
            else:
                self.lines.append(text.rstrip("\n"))

    def close(self) -> None:
        if not self.local and self.lines:
            storage.write_text(self.log_path, "\n".join(self.lines) + "\n")


def route_ray_output(console: RunConsole) -> bool:
    """Send what Ray forwards to the driver through `console` instead of Ray's own printer:
    the workers' output (Ray's stream dispatcher) and the cluster's error messages (a
    raylet's "Raylet is terminated" dump, a node "marked dead"), which Ray's error listener
    prints through `ray._private.worker.print_to_stdstream`. False when this Ray forwards
    nothing to the driver (nothing to route)."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    if not any(name == RAY_HANDLER for name, _ in dispatcher.handlers):
        return False
    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.add_handler(OUR_HANDLER, console.handle)

    def print_through_console(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        console.handle(data)

    ray_worker.print_to_stdstream = print_through_console
    return True


def unseen_epoch_rows(history: list[dict[str, Any]], last_shown: int) -> list[dict[str, Any]]:
    """metrics.jsonl rows the console has not shown: a rank 0 lost with its node had
    written them before its printed line could be forwarded."""
    return [row for row in history if int(row.get("epoch", 0)) > last_shown]


def show_unseen_epochs(console: RunConsole, cfg: Config, run_dir: RunDir) -> None:
    """Print the epoch lines of metrics.jsonl that the console has not shown."""
    path = file_in(run_dir, METRICS_FILE)
    history = read_metrics(storage.read_text(path)) if storage.exists(path) else []
    for row in unseen_epoch_rows(history, console.last_epoch_shown):
        console.show(progress_line(row, cfg))
