"""Which line of a text file is not in the expected encoding, for a one-line error.

pyarrow's CSV reader says only "invalid UTF8 data"; after it fails, `encoding_error` scans
the file line by line (the error path only) and names the first line that does not decode,
with the byte and the option that reads such files.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from data_pipeline.errors import DataError


def undecodable_line(path: Path, encoding: str) -> tuple[int, int] | None:
    """(1-based line, offending byte) of the first line that does not decode, or None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as err:
                return number, err.object[err.start]
    return None


def encoding_error(path: Path, encoding: str) -> DataError | None:
    """A DataError naming the first line of `path` that is not `encoding`, or None when all decode."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        return DataError(f"--encoding {encoding!r}: unknown text encoding; use e.g. utf-8, latin-1 or cp1252")
    found = undecodable_line(path, encoding)
    if found is None:
        return None
    line, byte = found
    return DataError(f"{path}: line {line} is not valid {encoding} text (byte {byte:#04x}); the file is probably "
                     "Latin-1 (or Windows-1252) encoded: pass --encoding latin-1 (or cp1252), or save it as UTF-8")
