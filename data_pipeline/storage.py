"""Locations that are local paths or object-store URIs (s3://, gs://, file://).

Everything the trainer and the data pipeline read or write outside a worker's memory goes
through these few functions, built on pyarrow's filesystems, so a dataset or a run
directory on S3 or GCS is used in place: a cluster reads shards without copying them to
every node. Local paths stay plain strings/Paths and keep their usual semantics.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from data_pipeline.errors import DiskError

Location = str | Path


def is_uri(location: Location) -> bool:
    return "://" in str(location)


def filesystem(location: Location) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def normalize(location: Location) -> str:
    """A URI unchanged (without a trailing slash); a local path made absolute."""
    if is_uri(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def join(base: Location, *parts: str) -> str:
    base = normalize(base)
    return "/".join([base, *parts]) if is_uri(base) else str(Path(base, *parts))


def name_of(location: Location) -> str:
    return normalize(location).rstrip("/").rsplit("/", 1)[-1]


def parent_of(location: Location) -> str:
    return normalize(location).rstrip("/").rsplit("/", 1)[0]


def exists(location: Location) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: Location) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_dir(location: Location) -> list[str]:
    """Names directly inside a directory ([] when it does not exist)."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def files_under(location: Location) -> dict[str, pafs.FileInfo]:
    """Relative path (forward slashes) -> pyarrow's FileInfo of every file under a directory,
    hidden ones included. Raises what pyarrow raises (OSError, ArrowException): each caller
    says what the listing was for."""
    fs, root = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = root.rstrip("/") + "/"
    return {i.path[len(prefix):]: i for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)}


def make_dirs(location: Location) -> None:
    fs, path = filesystem(location)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as err:
        raise disk_error(location, err) or err from None


def read_bytes(location: Location) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file atomically: a local file via a temporary name and a rename; an
    object via one upload (objects appear whole or not at all)."""
    if not is_uri(location):
        path = Path(normalize(location))
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)  # a partial temp file would keep the space a full disk lacks
            raise disk_error(path, err, len(data)) or err from None
        return
    fs, fs_path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):  # a file:// URI: local semantics
        write_bytes(fs_path, data)
        return
    with fs.open_output_stream(fs_path) as f:
        f.write(data)


# errno of a write that no retry can fix: no space, over quota, read-only, not allowed.
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def disk_error(path: Location, err: OSError, need_bytes: int | None = None) -> DiskError | None:
    """One line for a write that failed for want of space or permission (None for other errors):
    the path, the reason, and for a full disk the free space and what the write needed."""
    why = DISK_ERRNOS.get(err.errno or 0)
    if why is None:
        return None
    detail = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        need = f", this write needs {_size(need_bytes)}" if need_bytes is not None else ""
        detail = f" ({_size(free_bytes(path))} free there{need})"
    return DiskError(f"cannot write {path}: {why}{detail}; free space or permissions there, or write to "
                     "another location (run.storage, --out)")


def free_bytes(path: Location) -> int:
    """Free bytes on the file system of `path` (of its nearest existing parent)."""
    p = Path(normalize(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def write_text(location: Location, text: str) -> None:
    write_bytes(location, text.encode())


def read_text(location: Location) -> str:
    return read_bytes(location).decode()


def local_copy(location: Location, cache_root: Location, key: str) -> Path:
    """A local file with the content of `location`: the path itself when local, else a copy
    downloaded once into `cache_root/key/` (e.g. to memory-map item features)."""
    if not is_uri(location):
        return Path(normalize(location))
    target = Path(cache_root).expanduser() / key / name_of(location)
    if not target.is_file():
        write_bytes(target, read_bytes(location))
    return target


def upload_tree(local_dir: Location, target: Location, last: str) -> None:
    """Copy a local directory tree to `target`, the file named `last` (e.g. the manifest)
    written after every other file, so that a reader never sees it before the rest."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.relative_to(local_dir).as_posix() == last):
        write_bytes(join(target, *p.relative_to(local_dir).parts), p.read_bytes())


def file_sha256(path: Location) -> str:
    """sha256 of a local file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def bytes_of_npy(array: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
