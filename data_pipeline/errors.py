"""The exceptions bad input raises: one line naming the file, row or column and the fix."""

from __future__ import annotations


class DataError(ValueError):
    """Input data (or an output location) is unusable; the message says where and how to fix it."""


class DatasetDamaged(DataError):
    """A prepared dataset no longer matches its manifest (a file missing, truncated, altered or
    unlisted, or the manifest disagreeing with the data). Always the same one-line shape:
    "dataset is damaged: <what, which file> — prepare it again (python jobs/prepare.py …)"."""

    def __init__(self, what: str, again: str):
        self.what = what
        self.again = again
        super().__init__(f"dataset is damaged: {what} — prepare it again ({again})")


class DiskError(DataError, OSError):
    """A write failed for want of space or permission (ENOSPC, EDQUOT, EROFS, EACCES, EPERM): the
    message names the path, the free space and what was needed. Retrying cannot help. Still an
    OSError, so that code which tolerates a failed optional write (a cache) goes on doing so."""
