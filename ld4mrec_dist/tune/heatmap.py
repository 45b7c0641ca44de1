"""Heatmaps of a 2-D grid sweep, like the paper's sensitivity figures (§4.4, Figs. 4-5).

Two panels: the selection metric on valid (best epoch of each trial) and the test
metric at that epoch, which is what the paper plots. Repeated samples of one grid
point are averaged; a point with no result (failed trial) is left blank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SYMBOLS = {"diffusion.sr_prob": "p", "diffusion.sr_gamma": "γ", "diffusion.noise_scale": "s",
           "diffusion.alpha_min": "α_min", "diffusion.steps": "T", "model.hidden": "d",
           "model.svd_rank": "d_svd", "train.lr": "learning rate", "train.batch_size": "batch size"}


def label(key: str) -> str:
    return f"{SYMBOLS[key]} ({key})" if key in SYMBOLS else key


def grid_matrix(rows: list[dict[str, Any]], x_key: str, y_key: str, value: str):
    """(x values, y values, Y×X mean of `value`), NaN where no trial reported it."""
    xs = sorted({r[x_key] for r in rows})
    ys = sorted({r[y_key] for r in rows})
    sums = np.zeros((len(ys), len(xs)))
    counts = np.zeros((len(ys), len(xs)))
    for r in rows:
        v = r.get(value)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        i, j = ys.index(r[y_key]), xs.index(r[x_key])
        sums[i, j] += v
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return xs, ys, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_grid_heatmap(rows: list[dict[str, Any]], x_key: str, y_key: str, metric: str,
                      out: str | Path, title: str = "") -> Path:
    """Write `out` (PNG): valid `metric` and its test counterpart over the (x, y) grid.

    `rows` are trials.csv rows: the swept keys, and each metric at the trial's best epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = metric.replace("valid/", "test/", 1)
    panels = [(metric, f"{metric} (best epoch)"), (test, f"{test} at that epoch")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for ax, (column, name) in zip(axes, panels):
        xs, ys, m = grid_matrix(rows, x_key, y_key, column)
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
                    ax.text(j, i, f"{m[i, j]:.4f}", ha="center", va="center", fontsize=8,
                            color="black" if m[i, j] > mid else "white")
        fig.colorbar(im, ax=ax, shrink=0.85)
    if title:
        fig.suptitle(title)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
