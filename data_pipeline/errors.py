"""The one exception bad input raises: a message naming the file, row or column and the fix."""

from __future__ import annotations


class DataError(ValueError):
    """Input data (or an output location) is unusable; the message says where and how to fix it."""
