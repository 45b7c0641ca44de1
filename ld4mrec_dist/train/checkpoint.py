"""Checkpoints: one safe file plus a small JSON that vouches for it.

A checkpoint directory holds `state.pt` (tensors and plain Python only, so it loads with
`torch.load(weights_only=True)`) and `meta.json` with the file's sha256, the format
version, the epoch and the dataset manifest hash. `meta.json` is written last: a partial
checkpoint has none, a corrupt one fails its checksum, and neither is ever loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from data_pipeline import storage
from data_pipeline.storage import Location

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
# Config sections that fix the parameter shapes and the meaning of the weights: resuming
# under a different value would load nonsense, so it is refused.
INCOMPATIBLE_ON_CHANGE = ("model", "diffusion")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "sha256": storage.file_sha256(d / STATE_FILE),
        "epoch": int(state.get("epoch", -1)),
        "manifest_sha256": state.get("manifest_sha256", ""),
    }
    (d / META_FILE).write_text(json.dumps(meta, indent=2))
    return d


def load_checkpoint(directory: Location) -> dict[str, Any]:
    """The verified state of a checkpoint directory (local or URI), loaded with weights_only=True."""
    meta_path, state_path = storage.join(directory, META_FILE), storage.join(directory, STATE_FILE)
    if not storage.is_file(meta_path) or not storage.is_file(state_path):
        raise CheckpointError(f"checkpoint {directory} is partial (no {META_FILE} or {STATE_FILE}): "
                              "it was interrupted while being written; resume from an earlier one")
    try:
        meta = json.loads(storage.read_bytes(meta_path))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {meta_path} is unreadable JSON ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory} has format version {meta.get('format_version')}, "
                              f"this trainer reads {FORMAT_VERSION}")
    data = storage.read_bytes(state_path)
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {state_path} is corrupt (sha256 differs from {META_FILE}); "
                              "delete it and resume from an earlier checkpoint")
    return load_state_bytes(data, state_path)


def load_state_bytes(data: bytes, where: Location) -> dict[str, Any]:
    """torch.load(weights_only=True) of a file's bytes; CheckpointError if unsafe or broken."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"checkpoint {where} cannot be loaded safely: {err}") from None


def state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def check_compatible(state: dict[str, Any], config: dict[str, Any], manifest_sha256: str) -> None:
    """Refuse to resume against another dataset or a config that changes the model."""
    if state.get("manifest_sha256") != manifest_sha256:
        raise CheckpointError(
            "the checkpoint was trained on another dataset (manifest sha256 "
            f"{str(state.get('manifest_sha256'))[:12]}… ≠ {manifest_sha256[:12]}…): resume with "
            "the same data.path/data.synthetic, or start a new run")
    saved = state.get("config", {})
    for section in INCOMPATIBLE_ON_CHANGE:
        if saved.get(section) != config.get(section):
            diff = {k: (saved.get(section, {}).get(k), v) for k, v in config.get(section, {}).items()
                    if saved.get(section, {}).get(k) != v}
            raise CheckpointError(f"cannot resume: config section '{section}' differs from the "
                                  f"checkpoint's (saved, now): {diff}; start a new run instead")
