"""What a run prints: its start-up lines, progress inside an epoch, and Ray's console settings.

Rank 0 alone prints (one line per epoch, `train/loop.py`). A training run's driver routes
what Ray forwards (`train/console.py`: its own lines to the console, the rest to run.log);
`quiet_ray_console` sets Ray's own environment settings for everything else Ray prints
(its printer where no route is installed, e.g. a sweep's trials, and its start-up
warnings), before Ray is started.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ld4mrec_dist.config import Config, config_to_dict

PREFIX = "[ld4mrec]"
# Progress inside an epoch: a bar on a terminal, else a line at each quarter; neither for
# an epoch shorter than these (seconds), so that short epochs print their one line only.
BAR_AFTER_S = 2.0
LINES_AFTER_S = 10.0
TTY, LINES = "tty", "lines"

# Ray's settings, read when `ray` is imported or starts: worker lines without the
# `(RayTrainWorker pid=…)` prefix (and, below, no ANSI colours in redirected output).
RAY_CONSOLE_ENV = {"RAY_DISABLE_WORKER_LOG_PREFIX": "1"}
# For the private local instance a run starts (RAY_ADDRESS unset or `local`), set before `ray` is
# first imported (Ray reads its auth mode then): token authentication stays on, said
# explicitly so that Ray does not warn that it chose it; and more concurrent worker starts
# than this host's cores, so that a Train worker group (~7 processes) does not trip the
# raylet's "worker processes … startup concurrency" warning.
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_worker_maximum_startup_concurrency": "16"}


def quiet_ray_console() -> None:
    """Set Ray's console settings (a user's own value wins); call before Ray starts."""
    for key, value in RAY_CONSOLE_ENV.items():
        os.environ.setdefault(key, value)
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if "ray" not in sys.modules and os.environ.get("RAY_ADDRESS", "local") == "local":
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_DISABLE_WORKER_LOG_PREFIX"] == "1":
        constants.RAY_DISABLE_WORKER_LOG_PREFIX = True  # type: ignore[attr-defined]  # ray imported before


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(cfg: Config) -> dict[str, Any]:
    """section.field -> value, for every value that differs from the default."""
    defaults = flat(config_to_dict(Config()))
    return {k: v for k, v in flat(config_to_dict(cfg)).items() if defaults.get(k) != v}


def config_line(cfg: Config) -> str:
    changes = config_changes(cfg)
    if not changes:
        return f"{PREFIX} config: the defaults (jobs/train.py --help lists them)"
    return f"{PREFIX} config, changed from the defaults: " + " ".join(f"{k}={v}" for k, v in changes.items())


def progress_mode() -> str:
    """How the driver's console shows progress: a terminal gets bars, anything else lines."""
    return TTY if sys.stdout.isatty() else LINES


class EpochProgress:
    """Progress of one epoch's steps on rank 0: a tqdm bar when the run trains in a process
    attached to a terminal, else (redirected, or in a Ray worker) a line at each quarter;
    nothing for the first seconds of an epoch, so short epochs show only their summary line."""

    def __init__(self, epoch: int, total: int, mode: str, enabled: bool, in_ray_worker: bool) -> None:
        self.epoch, self.total, self.mode, self.enabled = epoch, max(total, 1), mode, enabled
        self.in_ray_worker = in_ray_worker
        self.t0 = time.perf_counter()
        self.done = 0
        self.next_quarter = 1
        self.bar: Any = None

    def update(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        # A Ray worker's output reaches the console only as `[ld4mrec]` lines (train/console.py).
        if self.mode == TTY and not self.in_ray_worker:
            if self.bar is None and elapsed >= BAR_AFTER_S and self.done < self.total:
                self.bar = self.open_bar()
            if self.bar is not None:
                self.bar.update(1)
            return
        while self.next_quarter < 4 and self.done >= self.total * self.next_quarter / 4:
            if elapsed >= LINES_AFTER_S:
                print(f"{PREFIX} epoch {self.epoch + 1}: {self.done}/{self.total} steps "
                      f"({25 * self.next_quarter} %), {elapsed:.0f}s", flush=True)
            self.next_quarter += 1

    def open_bar(self) -> Any:
        from tqdm import tqdm

        bar = tqdm(desc=f"epoch {self.epoch + 1}", total=self.total, unit="step", leave=False)
        bar.update(self.done - 1)  # the steps before it appeared
        return bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
