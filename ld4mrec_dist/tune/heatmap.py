"""Heatmaps of a 2-D grid sweep, like the paper's sensitivity figures (§4.4, Figs. 4-5).

Two panels: the selection metric on valid (best epoch of each trial) and the test
metric at that epoch, which is what the paper plots. Only trials that trained to their
end (`outcome == completed`) fill a cell: a trial ASHA stopped at an early rung has not
converged, and averaging it in would draw ASHA's schedule, not the hyperparameters. When
a grid point ran several times (num_samples > 1), the cell shows the completed trial
with the best valid metric, and its test metric beside it (never a test-side choice).
A cell with no completed trial is left blank (uncoloured) and says why (stopped by ASHA,
error, …); for a trial ASHA stopped it also prints, in grey, the epoch of the stop and the
panel's metric at its best epoch so far (a lower bound of what it would have reached, not
comparable with the coloured cells). Every coloured cell is annotated with its value, and
when all of them tie the subtitle says so first (one colour would read as a scale). The
figure's subtitle says all of this.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ld4mrec_dist.tune.ranking import rank_key

SYMBOLS = {"diffusion.sr_prob": "p", "diffusion.sr_gamma": "γ", "diffusion.noise_scale": "s",
           "diffusion.alpha_min": "α_min", "diffusion.steps": "T", "model.hidden": "d",
           "model.svd_rank": "d_svd", "train.lr": "learning rate", "train.batch_size": "batch size"}
SHOWN = "completed"
"""The outcome of the trials a cell may show (see ld4mrec_dist/tune/ledger.py)."""
BLANK_NOTES = {"stopped_by_asha": "ASHA", "error": "error", "interrupted": "interrupted",
               "not_started": "not run", "no_result": "no result"}


def label(key: str) -> str:
    return f"{SYMBOLS[key]} ({key})" if key in SYMBOLS else key


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


Cells = list[list[dict[str, Any] | None]]


def cell_trials(rows: list[dict[str, Any]], x_key: str, y_key: str,
                select: str) -> tuple[list[Any], list[Any], Cells, np.ndarray]:
    """(x values, y values, Y×X grid of the chosen row per cell or None, Y×X counts of
    completed trials): the completed trial with the best `select` in each cell.

    Rows without an `outcome` column (hand-made tables) count as completed."""
    xs = sorted({r[x_key] for r in rows})
    ys = sorted({r[y_key] for r in rows})
    chosen: Cells = [[None] * len(xs) for _ in ys]
    counts = np.zeros((len(ys), len(xs)), dtype=int)
    for r in rows:
        if r.get("outcome", SHOWN) != SHOWN or not _finite(r.get(select)):
            continue
        i, j = ys.index(r[y_key]), xs.index(r[x_key])
        counts[i, j] += 1
        current = chosen[i][j]
        if current is None or rank_key(r, select) < rank_key(current, select):  # ties: ranking.TIE_RULE
            chosen[i][j] = r
    return xs, ys, chosen, counts


def grid_matrix(rows: list[dict[str, Any]], x_key: str, y_key: str, value: str,
                select: str | None = None) -> tuple[list[Any], list[Any], np.ndarray]:
    """(x values, y values, Y×X `value` of each cell's best completed trial by `select`
    (default: `value` itself)), NaN where no completed trial reported it."""
    xs, ys, chosen, _ = cell_trials(rows, x_key, y_key, select or value)
    m = np.full((len(ys), len(xs)), np.nan)
    for i in range(len(ys)):
        for j in range(len(xs)):
            r = chosen[i][j]
            if r is not None and _finite(r.get(value)):
                m[i, j] = float(r[value])
    return xs, ys, m


def blank_notes(rows: list[dict[str, Any]], x_key: str, y_key: str, xs: list[Any],
                ys: list[Any], value: str | None = None, select: str | None = None) -> list[list[str]]:
    """Per cell, why it has no completed trial: the outcomes of the trials it did have.

    With `value`, a trial ASHA stopped also shows where (`@<epoch>` when the row has
    `stopped_at_epoch`) and its `value` at its best epoch so far by `select` (default
    `value`): e.g. "ASHA @16: 0.1547"; several stopped trials in a cell: the best by `select`."""
    notes: list[list[set[str]]] = [[set() for _ in xs] for _ in ys]
    stopped: list[list[dict[str, Any] | None]] = [[None] * len(xs) for _ in ys]
    select = select or value
    for r in rows:
        outcome = r.get("outcome", SHOWN)
        i, j = ys.index(r[y_key]), xs.index(r[x_key])
        if outcome == "stopped_by_asha" and value and select and _finite(r.get(value)) and _finite(r.get(select)):
            best = stopped[i][j]
            if best is None or rank_key(r, select) < rank_key(best, select):
                stopped[i][j] = r
        elif outcome != SHOWN:
            notes[i][j].add(BLANK_NOTES.get(outcome, outcome))
    out = []
    for i, row in enumerate(notes):
        line = []
        for j, cell in enumerate(row):
            stop = stopped[i][j]
            if stop is not None and value:
                epoch = stop.get("stopped_at_epoch")
                at = f" @{int(epoch)}" if isinstance(epoch, (int, float)) and _finite(epoch) else ""
                cell = {*cell, f"ASHA{at}: {float(stop[value]):.4f}"}
            line.append("\n".join(sorted(cell)))
        out.append(line)
    return out


def all_tie_note(rows: list[dict[str, Any]], x_key: str, y_key: str, metric: str) -> str:
    """'all N cells tie at v on metric: ...' when every coloured cell holds the same valid
    value (one colour, and the grid says nothing about the two keys), else ''."""
    _, _, m = grid_matrix(rows, x_key, y_key, metric)
    finite = m[np.isfinite(m)]
    if finite.size < 2 or finite.min() != finite.max():
        return ""
    return (f"all {finite.size} cells tie at {metric} {finite[0]:.4f}: on this data the grid does not "
            "separate these values")


def plot_grid_heatmap(rows: list[dict[str, Any]], x_key: str, y_key: str, metric: str,
                      out: str | Path, title: str = "") -> Path:
    """Write `out` (PNG): valid `metric` and its test counterpart over the (x, y) grid.

    `rows` are trials.csv rows: the swept keys, the outcome, and each metric at the
    trial's best epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = metric.replace("valid/", "test/", 1)
    panels = [(metric, f"{metric} (best epoch)"), (test, f"{test} at that epoch")]
    _, _, _, counts = cell_trials(rows, x_key, y_key, metric)
    several = bool((counts > 1).any())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.9), constrained_layout=True)
    for ax, (column, name) in zip(axes, panels, strict=True):
        xs, ys, m = grid_matrix(rows, x_key, y_key, column, select=metric)
        notes = blank_notes(rows, x_key, y_key, xs, ys, value=column, select=metric)
        im = ax.imshow(np.ma.masked_invalid(m), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, (int, float)) else str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, (int, float)) else str(y) for y in ys])
        ax.set_xlabel(label(x_key))
        ax.set_ylabel(label(y_key))
        ax.set_title(name)
        finite = m[np.isfinite(m)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(len(ys)):
            for j in range(len(xs)):
                if np.isfinite(m[i, j]):
                    text = f"{m[i, j]:.4f}" + (f"\n(best of {counts[i, j]})" if counts[i, j] > 1 else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="black" if m[i, j] > mid else "white")
                elif notes[i][j]:
                    ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=7, color="dimgray")
        fig.colorbar(im, ax=ax, shrink=0.85)
    shown = ("completed trials only (best valid per cell)" if several else "completed trials only")
    subtitle = (f"{shown}; blank: no completed trial (the cell says why; grey 'ASHA @e: v' is a stopped "
                "trial's best up to epoch e, not comparable)")
    tie = all_tie_note(rows, x_key, y_key, metric)
    if tie:
        subtitle = f"{tie}\n{subtitle}"
    fig.suptitle(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
