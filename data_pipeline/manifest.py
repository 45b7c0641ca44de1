"""manifest.json: what a prepared dataset holds and how every input row was accounted for.

No timestamps or absolute paths, keys in a fixed order: the same input and config give
byte-identical manifests, and `sha256(manifest.json)` fingerprints the whole dataset
(it lists every data file with its sha256).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipeline import storage
from data_pipeline.errors import DataError, DatasetDamaged
from data_pipeline.storage import Location

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def check_accounting(counts: dict[str, Any]) -> None:
    """Input = kept + filtered + merged + dropped, and split rows = kept + injected; RuntimeError if not."""
    accounted = (counts["kept"] + counts["filtered_by_rating"] + counts["duplicates_merged"]
                 + sum(counts["dropped"].values()))
    if accounted != counts["input_rows"]:
        raise RuntimeError(f"row accounting is off: {counts['input_rows']} input rows but {accounted} "
                           f"accounted for ({counts})")
    injected = counts["injected_noise"]["natural"] + counts["injected_noise"]["random"]
    if sum(counts["rows_per_split"].values()) != counts["kept"] + injected:
        raise RuntimeError(f"split rows {counts['rows_per_split']} != kept {counts['kept']} + injected {injected}")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """`folder/manifest.json`, after checking the accounting identity; every listed file's
    entry gains its size (`bytes`), which workers check cheaply before reading."""
    check_accounting(manifest["counts"])
    for entry in _file_entries(manifest):
        entry["bytes"] = (folder / entry["file"]).stat().st_size
    text = json.dumps(manifest, indent=2, ensure_ascii=True) + "\n"
    (folder / MANIFEST).write_text(text, encoding="ascii")


def read_manifest(folder: Location) -> tuple[dict[str, Any], bytes]:
    """(parsed manifest, its bytes); DataError when missing, unreadable or of another version.
    `folder` is a local path or a URI (s3://, gs://, file://)."""
    path = storage.join(folder, MANIFEST)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise DataError(f"{folder}: no {MANIFEST}; not a prepared dataset (or an interrupted one): "
                        "prepare it with jobs/prepare.py") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err}); check the location and its credentials") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetDamaged(f"{MANIFEST} is not valid JSON ({err})",
                             f"python jobs/prepare.py … --out {folder} --overwrite") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format version {version!r}, this code reads {FORMAT_VERSION}; "
                        "prepare the dataset again with --overwrite")
    return manifest, raw


def listed_files(manifest: dict[str, Any]) -> list[str]:
    """Every data file the manifest lists, relative to the dataset folder."""
    return [entry["file"] for entry in _file_entries(manifest)]


def listed_entries(manifest: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """relative file -> (sha256, bytes) for every data file the manifest lists; bytes is None
    in manifests written before sizes were recorded."""
    return {e["file"]: (e["sha256"], e.get("bytes")) for e in _file_entries(manifest)}


def _file_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries themselves (shards, then features, then the rest)."""
    entries = [entry for split in manifest["files"]["splits"].values() for entry in split]
    entries += list(manifest["modalities"])
    entries += list(manifest["files"]["other"])
    return entries
