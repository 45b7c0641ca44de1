"""Which trial is best: the highest valid metric, ties broken by a fixed rule.

Used for the sweep's best config and for each heatmap cell. Tune lists its results in an
order that changes between a run and its resume, so "the first of the tied trials"
would pick differently each time: the rule below depends only on the trials themselves.
"""

from __future__ import annotations

import math
from typing import Any

TIE_RULE = "on a tie, the trial that reached it at the earlier epoch, then the lowest trial id"
"""How `best_row` picks among trials with the same valid metric (printed when it applies).
Tune's order of results changes between a run and its resume: 'the first' is no rule."""


def rank_key(row: dict[str, Any], metric: str) -> tuple[float, float, str]:
    """Sort key of a scored trial, best first: higher `metric`, earlier best epoch, lower id."""
    epoch = row.get("best_epoch")
    return (-float(row[metric]), float(epoch) if isinstance(epoch, (int, float)) else math.inf,
            str(row.get("trial_id", "")))


def scored_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows with a finite `metric`, best first by `rank_key`."""
    scored = [r for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    return sorted(scored, key=lambda r: rank_key(r, metric))


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The trial with the highest valid metric (ties: `TIE_RULE`); None if none reported."""
    scored = scored_rows(rows, metric)
    return scored[0] if scored else None


def tied_with_best(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The scored rows whose `metric` equals the best one's (the best included)."""
    scored = scored_rows(rows, metric)
    return [r for r in scored if r[metric] == scored[0][metric]] if scored else []
