"""Tune's own state files, vouched for by the sweep before `--resume` lets Tune read them.

Ray Tune's restore unpickles what it finds in the sweep directory: `tuner.pkl`, the
newest `experiment_state-*.json` and `basic-variant-state-*.json` (JSON wrapping
cloudpickle payloads) and each trial's `error.pkl`. Unpickling runs code, and a sweep
directory on shared storage can be written by others: a replaced `tuner.pkl` would run
its author's code on the next resume. The sweep therefore records the sha256 of each of
these files in its own JSON ledger (`tune_state.json`) right after Tune writes them (the
driver hashes them after every Tune step and when `fit()` returns), and `--resume`
refuses a directory holding such a file that is not in the ledger or whose content
changed, naming the file, before Tune opens any of them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from data_pipeline.storage import file_sha256
from ld4mrec_dist.config import ConfigError

logger = logging.getLogger(__name__)

LEDGER_FILE = "tune_state.json"
PATTERNS = ("tuner.pkl", "experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.pkl",
            "*/error.pkl")
"""Every file of a sweep directory that Tune's restore (or its result grid) unpickles."""


class UntrustedStateError(ConfigError):
    """A Tune state file the sweep did not write (or that changed since): never unpickled."""


def state_files(sweep_dir: Path) -> list[Path]:
    """The sweep directory's files that Tune unpickles on restore, in the order of PATTERNS."""
    found: list[Path] = []
    for pattern in PATTERNS:
        found += [p for p in sorted(Path(sweep_dir).glob(pattern)) if p.is_file() and p not in found]
    return found


def read_ledger(sweep_dir: Path) -> dict[str, str]:
    """relative path -> sha256 ({} if the sweep has no ledger or it is unreadable)."""
    try:
        data = json.loads((Path(sweep_dir) / LEDGER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    files = data.get("sha256") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


class StateRecorder:
    """Keeps the ledger up to date: hashes only the files whose size or mtime changed."""

    def __init__(self, sweep_dir: str | Path):
        self.sweep_dir = Path(sweep_dir)
        self._seen: dict[str, tuple[int, int]] = {}
        self._hashes = read_ledger(self.sweep_dir)

    def record(self) -> None:
        """Hash what changed; a failure is logged, never raised (it must not stop the sweep:
        the next `--resume` then refuses the file it could not record, and says which)."""
        try:
            self._record()
        except OSError as err:
            logger.warning("could not record Tune's state files in %s: %s", self.sweep_dir / LEDGER_FILE, err)

    def _record(self) -> None:
        changed = False
        for path in state_files(self.sweep_dir):
            rel = path.relative_to(self.sweep_dir).as_posix()
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._seen.get(rel) == stamp and rel in self._hashes:
                continue
            self._seen[rel] = stamp
            digest = file_sha256(path)
            changed |= self._hashes.get(rel) != digest
            self._hashes[rel] = digest
        if changed:
            tmp = self.sweep_dir / f".{LEDGER_FILE}.tmp"
            tmp.write_text(json.dumps({"sha256": dict(sorted(self._hashes.items()))}, indent=1))
            os.replace(tmp, self.sweep_dir / LEDGER_FILE)  # whole or not at all: a reader never sees half


def verify(sweep_dir: Path) -> None:
    """Raise UntrustedStateError naming the first state file the ledger does not vouch for."""
    sweep_dir = Path(sweep_dir)
    ledger = read_ledger(sweep_dir)
    for path in state_files(sweep_dir):
        rel = path.relative_to(sweep_dir).as_posix()
        expected = ledger.get(rel)
        if expected is None:
            raise UntrustedStateError(
                f"--resume {sweep_dir}: {path} is not in the sweep's record of the files Tune wrote "
                f"({LEDGER_FILE}); it is never unpickled: remove it if you did not put it there, or start "
                "the sweep again with --sweep")
        if file_sha256(path) != expected:
            raise UntrustedStateError(
                f"--resume {sweep_dir}: {path} changed since the sweep wrote it (sha256 differs from "
                f"{LEDGER_FILE}); it is never unpickled: restore the original file, or start the sweep "
                "again with --sweep")
