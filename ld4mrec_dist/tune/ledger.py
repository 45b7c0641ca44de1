"""What happened to each trial, as the sweep's driver saw it: `<sweep>/trial_events.jsonl`.

Tune's own result of a trial does not say *why* it ended: a trial that ASHA stopped, one
cut off by Ctrl-C and one whose result Tune lost on restore all look alike. The driver
appends one line per event (started, stopped_by_asha, terminated, error) and a trial's
outcome is read from its events since it last started, and from its run directory
(`final_metrics.json` is written only when training ran to its end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "trial_events.jsonl"

COMPLETED = "completed"
STOPPED_BY_ASHA = "stopped_by_asha"
INTERRUPTED = "interrupted"
NOT_STARTED = "not_started"
ERROR = "error"
NO_RESULT = "no_result"
OUTCOMES = (COMPLETED, STOPPED_BY_ASHA, INTERRUPTED, NOT_STARTED, ERROR, NO_RESULT)
"""completed: trained to its end (final_metrics.json); stopped_by_asha: ASHA stopped it
at a rung; interrupted: it was running (or queued after starting) when the sweep was
interrupted, `--resume` continues it; not_started: the sweep ended before it started;
error: it failed (see the `error` column); no_result: it ended without any of these."""


def record(sweep_dir: str | Path, trial_id: str, event: str, **detail: Any) -> None:
    """Append one event; a line is written whole in one call (the driver is one process)."""
    line = json.dumps({"trial_id": trial_id, "event": event, "time": round(time.time(), 3), **detail})
    with open(Path(sweep_dir) / EVENTS_FILE, "a") as f:
        f.write(line + "\n")


def read_events(sweep_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """trial id -> its events in order (a torn last line, from a killed driver, is skipped)."""
    path = Path(sweep_dir) / EVENTS_FILE
    events: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return events
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.setdefault(e["trial_id"], []).append(e)
    return events


def outcome_of(events: list[dict[str, Any]], completed: bool, error: str | None) -> str:
    """A trial's outcome from what actually happened, most certain evidence first."""
    if completed:
        return COMPLETED
    last_start = max((i for i, e in enumerate(events) if e["event"] == "started"), default=-1)
    since = {e["event"] for e in events[last_start + 1:]}
    if error or ERROR in since:
        return ERROR
    if STOPPED_BY_ASHA in since:
        return STOPPED_BY_ASHA
    if last_start < 0:
        return NOT_STARTED
    if "terminated" in since:
        return NO_RESULT
    return INTERRUPTED


def error_of(events: list[dict[str, Any]]) -> str:
    """The last recorded error message of a trial ('' if none)."""
    return next((e.get("error", "") for e in reversed(events) if e["event"] == ERROR), "")
