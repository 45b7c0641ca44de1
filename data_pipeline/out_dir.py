"""Which output directory a prepare may replace: only a dataset this project wrote.

`--overwrite` deletes the old directory. It is allowed only when that directory is a
prepared dataset (its `manifest.json` reads as one) holding nothing but what the manifest
lists (plus the hash cache `.verified.json`), and none of the prepare's own inputs. Anything
else (an input folder, a home directory, a dataset someone added notes to) is refused with
the reason, so a mistyped `--out` never deletes what the project did not write.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from data_pipeline import storage
from data_pipeline.errors import DataError
from data_pipeline.manifest import MANIFEST, listed_files, read_manifest
from data_pipeline.storage import Location
from data_pipeline.verify import CACHE_FILE


def check_replaceable(out: Location, inputs: Iterable[Location] = ()) -> None:
    """Return when `out` may be deleted and written again (absent, empty, or a dataset this
    project prepared, holding no input); DataError naming the reason otherwise."""
    if not storage.exists(out):
        return
    if storage.is_file(out):
        raise DataError(f"--out {out} is a file, not a dataset directory: --overwrite replaces only a dataset "
                        "that jobs/prepare.py wrote; choose another --out")
    found = files_under(out)
    if not found:
        return
    _refuse_if_input_inside(out, inputs)
    if MANIFEST not in found:
        raise DataError(f"--out {out} is not a prepared dataset (no {MANIFEST}; it holds e.g. {sorted(found)[0]}): "
                        "--overwrite replaces only a dataset that jobs/prepare.py wrote; choose an empty or new --out")
    try:
        manifest, _ = read_manifest(out)
        known = {*listed_files(manifest), MANIFEST, CACHE_FILE}
    except (DataError, KeyError, TypeError, AttributeError):
        raise DataError(f"--out {out}: its {MANIFEST} is not one that jobs/prepare.py writes, so it may not be a "
                        "dataset: not replaced; delete it yourself if it is, or choose another --out") from None
    unknown = sorted(found - known)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise DataError(f"--out {out} holds {unknown[0]}{more}, which is not part of the dataset its {MANIFEST} "
                        "lists: not replaced; move it out first, or choose another --out")


def files_under(location: Location) -> set[str]:
    """Relative paths (forward slashes) of every file under `--out`, hidden ones included."""
    try:
        return set(storage.files_under(location))
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"--out {location}: cannot be listed ({err})") from None


def _refuse_if_input_inside(out: Location, inputs: Iterable[Location]) -> None:
    root = storage.normalize(out).rstrip("/") + "/"
    for item in inputs:
        where = storage.normalize(item)
        if where == root[:-1] or where.startswith(root):
            raise DataError(f"--out {out} holds the input {item}: --overwrite would delete it; "
                            "write the dataset to another --out")
