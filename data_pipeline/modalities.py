"""A source's modalities, assembled: its item table's fields, `--item-text` columns and given feature files.

`add_modalities` puts them in one order (text first, then as they come: item-table fields in
file order, then feature files) into `Source.features`, refuses a name made twice, and returns
what the manifest records: per modality its kind, item coverage and where it came from, and
per item-table field the choice made and why. `modality_table` prints that record back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource
from data_pipeline.item_fields import KINDS, ItemPlan, item_modalities, read_item_table
from data_pipeline.source import Source

if TYPE_CHECKING:
    from data_pipeline.streaming import TabularLog


@dataclass(frozen=True)
class ModalityOptions:
    """What the user asked for on the item side (the `jobs/prepare.py` options of the same names)."""

    items: Path | None = None
    """An item table replacing the source's own (a RecBole source's `<name>.item`)."""
    item_fields: Mapping[str, str] = field(default_factory=dict)
    """Field -> kind overrides (`--item-fields`)."""
    item_text: tuple[str, ...] = ()
    """`[MODALITY=]FILE:COLUMN` text columns (`--item-text`)."""
    no_text: bool = False
    key: str = "item_id"
    encoding: str = "utf-8"
    cache_dir: str | Path | None = None


def add_modalities(source: Source | TabularLog, opts: ModalityOptions, plan: ItemPlan,
                   encoder: Callable[[], Any]) -> dict[str, Any]:
    """Set `source.features` to every modality in order; returns the manifest config it adds
    (`modalities`, `item_fields`, `text`). `plan` applies to the source's own item table only."""
    table = opts.items or source.item_table
    if table is None and opts.item_fields:
        raise DataError(f"--item-fields: {source.name} has no item table; name one with --items FILE")
    made: list[tuple[str, FeatureSource, dict[str, Any]]] = []
    extra: dict[str, Any] = {}
    if table is not None:
        items = item_modalities(read_item_table(table, opts.key, source.item_ids, opts.encoding), encoder,
                                opts.cache_dir, opts.item_fields,
                                plan if table == source.item_table else ItemPlan(), opts.no_text)
        made += [(n, f, items.described[n]) for n, f in items.features.items()]
        extra["item_fields"] = {"file": table.name, "key": opts.key, "fields": items.fields}
        if table not in source.files:
            source.files.append(table)
    made += text_columns(source, opts, encoder)
    made += [(n, f, {"kind": "dense", "fields": [], "coverage": 1.0, "detail": f"{f.path.name}, as given"})
             for n, f in source.features.items()]
    made.sort(key=lambda m: m[2]["kind"] != "text")                 # text first, otherwise in order (stable)
    names = [n for n, _, _ in made]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"modality {twice[0]!r} comes from two inputs; name the --item-text MODALITY=FILE:COLUMN, "
                        "rename the --feature, or skip the item field (--item-fields FIELD:skip)")
    source.features = {n: f for n, f, _ in made}
    extra["modalities"] = {n: d for n, _, d in made}
    texts = [n for n, _, d in made if d["kind"] == "text"]
    if texts:
        extra["text"] = {"encoder": encoder().name, "modalities": texts}
    return extra


def text_columns(source: Source | TabularLog, opts: ModalityOptions,
                 encoder: Callable[[], Any]) -> list[tuple[str, FeatureSource, dict[str, Any]]]:
    """The `--item-text` modalities: every item must have its text."""
    from data_pipeline.text_features import item_text_feature

    made = []
    for spec in opts.item_text:
        name, feat = item_text_feature(spec, opts.key, source.item_ids, encoder(), opts.cache_dir, opts.encoding)
        made.append((name, feat, {"kind": "text", "fields": [spec], "coverage": 1.0,
                                  "detail": f"--item-text {spec}, encoder {encoder().name}"}))
        source.files.append(feat.path)
    return made


def modality_table(manifest: Mapping[str, Any]) -> str:
    """The dataset's modalities (name, kind, width, item coverage %, where from and why) and the
    skipped item fields with their reasons, from the manifest."""
    described = manifest["config"].get("modalities", {})
    fields = manifest["config"].get("item_fields", {}).get("fields", [])
    why = {f["modality"]: f"{f['reason']} ({f['by']})" for f in fields if f["modality"]}
    rows = [("modality", "kind", "width", "items", "from (why)")]
    for m in manifest["modalities"]:
        d = described.get(m["name"], {"kind": "dense", "coverage": 1.0, "detail": "feature file, as given"})
        reason = f" — {why[m['name']]}" if m["name"] in why else ""
        rows.append((m["name"], d["kind"], str(m["dim"]), f"{100 * d['coverage']:.1f}%", d["detail"] + reason))
    if len(rows) == 1:
        rows.append(("(none)", "-", "-", "-", "the BG-Block will have no modality: LD4MRec becomes unimodal"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                        r[3].rjust(widths[3]), r[4]]) for r in rows]
    lines += [f"skipped item field {f['field']} ({f['type']}): {f['reason']}" for f in fields if f["kind"] == "skip"]
    if fields:
        lines.append(f"(override a field's kind with --item-fields FIELD:KIND,... ; KIND in {', '.join(KINDS)})")
    return "\n".join(lines)
