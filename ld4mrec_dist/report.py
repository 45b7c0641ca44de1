"""Results a person can look at: training-curve PNGs and plain-text tables."""

from __future__ import annotations

import io
import json
import numbers
from collections.abc import Sequence
from typing import Any


def read_metrics(text: str) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file's text."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table; floats with 4 decimals; a column of numbers (and its header)
    right-aligned, any other column left-aligned. ValueError for a row whose length differs
    from the header's."""
    bad = next((row for row in rows if len(row) != len(headers)), None)
    if bad is not None:
        raise ValueError(f"table row {list(bad)} has {len(bad)} cells; the header has {len(headers)}")
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(is_number(row[i]) or row[i] in ("", None) for row in rows)
               for i in range(len(headers))]

    def justify(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    line = "  ".join(justify(h, i) for i, h in enumerate(headers))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(justify(c, i) for i, c in enumerate(r)) for r in cells]
    return "\n".join([line, sep, *body])


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def metric_label(name: str) -> str:
    """`recall@20` -> `Recall@20`, `ndcg@10` -> `NDCG@10` (as the tables write them)."""
    kind, _, k = name.partition("@")
    return f"{ {'recall': 'Recall', 'ndcg': 'NDCG'}.get(kind, kind)}@{k}" if k else name


def plot_training_curves(history: list[dict[str, Any]], title: str = "") -> bytes:
    """PNG bytes of `training_curves_figure`."""
    import matplotlib.pyplot as plt

    fig = training_curves_figure(history, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves_figure(history: list[dict[str, Any]], title: str = "") -> Any:
    """A matplotlib figure: the training loss, and each ranking metric per epoch in its own
    colour, valid solid and test dashed (test is scored only at some epochs), best epoch
    marked, the legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.25]})
    ax_loss.plot(epochs, [r["loss"] for r in history], marker=".", color="black")
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted L_rec)", title="Training loss")
    names = sorted({k.split("/", 1)[1] for r in history for k in r if k.startswith(("valid/", "test/"))},
                   key=lambda n: (n.partition("@")[0] != "recall", n.partition("@")[0], int(n.partition("@")[2] or 0)))
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    for i, name in enumerate(names):
        for split, style in (("valid", "-"), ("test", "--")):
            points = [(r["epoch"], r[f"{split}/{name}"]) for r in history if f"{split}/{name}" in r]
            if points:
                ax_metric.plot([e for e, _ in points], [v for _, v in points], style, marker=".",
                               color=colours[i % len(colours)], label=f"{metric_label(name)} ({split})")
    if history and history[-1].get("best_epoch", -1) > 0:
        ax_metric.axvline(history[-1]["best_epoch"], color="grey", lw=0.8, ls=":", label="best valid epoch")
    ax_metric.set(xlabel="epoch", ylabel="metric value (all-item ranking)",
                  title="Ranking metrics: valid solid, test dashed")
    if names:
        ax_metric.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def modality_lines(manifest: dict[str, Any], used: Sequence[str], ablation: str) -> list[str]:
    """Start-up lines saying which modalities (`used`, in order) the BG-Block conditions on, with
    kind, width and item coverage from the dataset's manifest; the first line says so when it has none."""
    available = [m["name"] for m in manifest["modalities"]]
    if ablation == "no_bg":
        return [f"[ld4mrec] modalities: none used (model.ablation=no_bg replaces the BG-Block; the dataset has "
                f"{', '.join(available) or 'none'})"]
    if not used:
        why = ("the dataset has none" if not available
               else f"model.modalities=[], though the dataset has {', '.join(available)}")
        return [f"[ld4mrec] WARNING: the BG-Block has no modality ({why}): it is the identity and LD4MRec "
                "trains without item content (C-Net = FC_in → BD → FC_out)"]
    dims = {m["name"]: m["dim"] for m in manifest["modalities"]}
    described = manifest.get("config", {}).get("modalities", {})
    parts = []
    for name in used:
        d = described.get(name, {})
        cover = f", {100 * d['coverage']:.1f}% of items" if "coverage" in d else ""
        parts.append(f"{name} ({d.get('kind', 'dense')}, {dims[name]} wide{cover})")
    unused = [m for m in available if m not in used]
    tail = f"; not used: {', '.join(unused)}" if unused else ""
    return [f"[ld4mrec] BG-Block modalities, in order: {'; '.join(parts)}{tail}"]
