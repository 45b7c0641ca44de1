"""Tables and curves a person reads: metrics.jsonl parsing, fixed-width tables, the PNG."""

import json

import pytest

from ld4mrec_dist.report import format_table, modality_lines, plot_training_curves, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_read_metrics_skips_blank_lines_and_keeps_order():
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "valid/recall@20": 0.1}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n  \n"
    assert read_metrics(text) == rows
    assert read_metrics("") == []


def test_format_table_aligns_columns_and_rounds_floats():
    table = format_table(["split", "recall@20"], [["valid", 0.123456], ["test", 1]])
    lines = table.splitlines()
    assert lines[0].split() == ["split", "recall@20"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["valid", "0.1235"] and lines[3].split() == ["test", "1"]
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    assert format_table(["a", "b"], []).splitlines()[0].split() == ["a", "b"]


def test_format_table_right_aligns_numbers_and_left_aligns_text():
    lines = format_table(["user", "score", "title"], [[42, 0.5, "Heat"], [7, 0.25, "The Usual Suspects"]]).splitlines()
    assert lines[0] == "user   score  title             "
    assert lines[2] == "  42  0.5000  Heat              "
    assert lines[3] == "   7  0.2500  The Usual Suspects"


def test_format_table_refuses_a_row_of_the_wrong_length():
    with pytest.raises(ValueError):
        format_table(["a", "b"], [["only one cell"]])


def test_training_curves_are_a_png_with_partial_test_points():
    history = [
        {"epoch": 1, "loss": 0.9, "valid/recall@20": 0.10, "test/recall@20": 0.09, "best_epoch": 1},
        {"epoch": 2, "loss": 0.8, "valid/recall@20": 0.08, "best_epoch": 1},  # test scored only on improvement
        {"epoch": 3, "loss": 0.7, "valid/recall@20": 0.12, "test/recall@20": 0.11, "best_epoch": 3},
    ]
    png = plot_training_curves(history, title="run")
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert plot_training_curves([]).startswith(PNG_MAGIC)  # a run stopped before its first evaluation


def manifest_with(*modalities):
    """A manifest's modality parts: (name, dim, kind, coverage) per modality."""
    return {"modalities": [{"name": n, "dim": d} for n, d, _, _ in modalities],
            "config": {"modalities": {n: {"kind": k, "coverage": c} for n, _, k, c in modalities}}}


def test_modality_lines_name_what_the_bg_block_uses():
    manifest = manifest_with(("title", 384, "text", 1.0), ("genre", 18, "multi_hot", 0.975))
    (line,) = modality_lines(manifest, ["title", "genre"], "none")
    assert line == ("[ld4mrec] BG-Block modalities, in order: title (text, 384 wide, 100.0% of items); "
                    "genre (multi_hot, 18 wide, 97.5% of items)")
    assert "not used: title" in modality_lines(manifest, ["genre"], "none")[0]


def test_modality_lines_warn_first_when_the_bg_block_has_none():
    (line,) = modality_lines(manifest_with(), [], "none")
    assert line.startswith("[ld4mrec] WARNING: the BG-Block has no modality (the dataset has none)")
    two = manifest_with(("genre", 6, "multi_hot", 1.0), ("title", 384, "text", 1.0))
    (line,) = modality_lines(two, [], "none")
    assert "(model.modalities=[], though the dataset has genre, title)" in line and "WARNING" in line
    assert "no_bg replaces the BG-Block; the dataset has genre, title)" in modality_lines(two, [], "no_bg")[0]


def test_training_curves_give_each_metric_one_colour_valid_solid_test_dashed_legend_outside():
    import matplotlib.pyplot as plt

    from ld4mrec_dist.report import training_curves_figure

    history = [
        {"epoch": e, "loss": 1.0 / e, "valid/recall@20": 0.1 * e, "valid/ndcg@20": 0.05 * e,
         "test/recall@20": 0.09 * e, "test/ndcg@20": 0.04 * e, "best_epoch": e} for e in (1, 2, 3)
    ]
    fig = training_curves_figure(history)
    ax_loss, ax_metric = fig.axes
    lines = {line.get_label(): line for line in ax_metric.get_lines()}
    for metric in ("Recall@20", "NDCG@20"):
        valid, test = lines[f"{metric} (valid)"], lines[f"{metric} (test)"]
        assert valid.get_color() == test.get_color()
        assert valid.get_linestyle() == "-" and test.get_linestyle() == "--"
    assert lines["Recall@20 (valid)"].get_color() != lines["NDCG@20 (valid)"].get_color()
    anchor = ax_metric.get_legend().get_bbox_to_anchor().transformed(ax_metric.transAxes.inverted())
    assert anchor.x0 > 1.0  # to the right of the axes, never over the curves
    assert ax_metric.get_ylabel().startswith("metric value") and ax_loss.get_ylabel().startswith("training loss")
    plt.close(fig)
