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
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_pipeline import storage
from data_pipeline.storage import Location
from ld4mrec_dist.config import Config, config_to_dict
from ld4mrec_dist.run_dir import RunDir, run_location

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
# Ray Train V2 keeps its checkpoint list here, in the run directory, and on resume refuses
# to start if it names a checkpoint that is gone (CheckpointManagerInitializationError).
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
# Config sections that fix the parameter shapes and the meaning of the weights: resuming
# under a different value would load nonsense, so it is refused.
INCOMPATIBLE_ON_CHANGE = ("model", "diffusion")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def quiet_report_logs() -> None:
    """Ray Train's worker logs every report ("Reporting training result …" with the whole
    metrics dict) at INFO on a logger named after its source file, outside `ray.train`, so
    Ray's RunConfig.logging_config does not reach it: raise that one logger to WARNING."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    d = Path(directory)
    # Serialised in memory, then written by `storage`: a full disk is one line naming the
    # file and the space (torch.save's own error names neither), and no partial file stays.
    data = state_bytes(state)
    storage.write_bytes(d / STATE_FILE, data)
    meta = {
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "epoch": int(state.get("epoch", -1)),
        "manifest_sha256": state.get("manifest_sha256", ""),
    }
    storage.write_text(d / META_FILE, json.dumps(meta, indent=2))
    return d


def load_checkpoint(directory: Location) -> dict[str, Any]:
    """The verified state of a checkpoint directory (local or URI), loaded with weights_only=True."""
    data, _ = verified_state_bytes(directory)
    return load_state_bytes(data, storage.join(directory, STATE_FILE))


def verified_state_bytes(directory: Location) -> tuple[bytes, dict[str, Any]]:
    """(state.pt bytes, meta.json) of a checkpoint whose meta vouches for its state file;
    CheckpointError naming the problem otherwise."""
    meta_path, state_path = storage.join(directory, META_FILE), storage.join(directory, STATE_FILE)
    if not storage.is_file(meta_path) or not storage.is_file(state_path):
        raise CheckpointError(f"checkpoint {directory} is partial (no {META_FILE} or {STATE_FILE}): "
                              "it was interrupted while being written")
    try:
        meta = json.loads(storage.read_bytes(meta_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {meta_path} is unreadable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"checkpoint {directory} has format version {version}, "
                              f"this trainer reads {FORMAT_VERSION}")
    data = storage.read_bytes(state_path)
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {state_path} is corrupt (sha256 differs from {META_FILE})")
    return data, meta


def checkpoint_problem(directory: Location) -> str | None:
    """Why a checkpoint cannot be resumed from (partial, corrupt, unsafe), or None if it can."""
    try:
        data, _ = verified_state_bytes(directory)
        load_state_bytes(data, storage.join(directory, STATE_FILE))
    except CheckpointError as err:
        return str(err)
    return None


def checkpoint_epoch(directory: Location) -> int:
    """The epoch a checkpoint's meta.json records; -1 when it has no readable one."""
    try:
        return int(json.loads(storage.read_bytes(storage.join(directory, META_FILE))).get("epoch", -1))
    except (OSError, ValueError, AttributeError, TypeError):
        return -1


def checkpoint_names(run_dir: Location) -> list[str]:
    """The Ray Train checkpoint directories of a run, newest first: Ray names them
    checkpoint_<date>_<time>.<µs>, so the name orders them, partial ones included."""
    names = [n for n in storage.list_dir(run_dir) if n.startswith("checkpoint_") and n != RAY_SNAPSHOT_FILE]
    return sorted(names, reverse=True)


def latest_checkpoint_dir(run_dir: RunDir) -> RunDir | None:
    """The run's newest complete-looking Ray Train checkpoint (by the epoch it records)."""
    candidates = []
    for name in storage.list_dir(run_dir):
        meta = storage.join(run_dir, name, META_FILE)
        if not name.startswith("checkpoint_") or not storage.is_file(meta):
            continue
        try:
            candidates.append((json.loads(storage.read_bytes(meta)).get("epoch", -1), name))
        except (OSError, json.JSONDecodeError):
            continue
    return run_location(storage.join(run_dir, max(candidates)[1])) if candidates else None


@dataclass
class ResumePoint:
    """The checkpoint a resume starts from, and the newer ones it passed over (name, why)."""

    name: str
    path: str
    epoch: int
    skipped: list[tuple[str, str]]


def choose_resume_checkpoint(run_dir: Location, name: str = "") -> ResumePoint:
    """The newest intact checkpoint of `run_dir` (or the one called `name`), verified up
    front: a partial or corrupt newer one is passed over, and said so, instead of failing
    in every worker after each restart."""
    names = checkpoint_names(run_dir)
    if name:
        name = name.rstrip("/").rsplit("/", 1)[-1]
        if name not in names:
            listed = ", ".join(names) or "none"
            raise CheckpointError(f"--from-checkpoint {name}: no such checkpoint in {run_dir} "
                                  f"(checkpoints: {listed})")
        problem = checkpoint_problem(storage.join(run_dir, name))
        if problem:
            raise CheckpointError(f"--from-checkpoint {name}: {problem}; choose another one ({', '.join(names)})")
        path = storage.join(run_dir, name)
        # Newer checkpoints belong to the branch being abandoned: set aside, or a later
        # --resume would pick them up again.
        newer = [(n, f"newer than --from-checkpoint {name}") for n in names[:names.index(name)]]
        return ResumePoint(name, path, checkpoint_epoch(path), newer)
    skipped: list[tuple[str, str]] = []
    for candidate in names:
        path = storage.join(run_dir, candidate)
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePoint(candidate, path, checkpoint_epoch(path), skipped)
        skipped.append((candidate, problem))
    if skipped:
        raise CheckpointError(f"--resume {run_dir}: no intact checkpoint left ("
                              + "; ".join(why for _, why in skipped) + "): start a new run")
    raise CheckpointError(f"--resume {run_dir}: no checkpoint in it (the run stopped before its first "
                          "evaluation); start a new run")


def newest_intact_checkpoint(run_dir: Location) -> ResumePoint | None:
    """The checkpoint `--resume` would start from (the newest intact one), None if none is."""
    try:
        return choose_resume_checkpoint(run_dir)
    except CheckpointError:
        return None


def restart_point(run_dir: Location, handed_epoch: int) -> ResumePoint | None:
    """The newest intact checkpoint on disk when it is newer than the one Ray Train hands a
    restarted worker group (`handed_epoch`, -1 for none): after a lost node, Ray's record
    can lag behind the checkpoints completed on disk; a restart follows `--resume`'s rule."""
    point = newest_intact_checkpoint(run_dir)
    return point if point is not None and point.epoch > handed_epoch else None


def retention_plan(checkpoints: list[tuple[str, int]], best_epoch: int) -> list[str]:
    """The checkpoints to delete so that a run keeps what it promises, the latest and the
    best: `checkpoints` are the intact ones as (name, epoch), the latest is the highest
    epoch (newest name on a tie), the best the newest one of `best_epoch`."""
    if not checkpoints:
        return []
    latest = max(checkpoints, key=lambda c: (c[1], c[0]))[0]
    best = max((c for c in checkpoints if c[1] == best_epoch), key=lambda c: c[0], default=None)
    keep = {latest, best[0] if best else latest}
    return sorted(name for name, _ in checkpoints if name not in keep)


def prune_checkpoints(run_dir: Location, best_epoch: int) -> list[str]:
    """Delete the intact checkpoints beyond the latest and the best (a restart after a lost
    node can leave some that Ray Train never recorded, so never deletes); partial or
    corrupt ones, and folders holding anything but this project's checkpoint files, are
    left alone. Returns the names deleted."""
    paths = {n: storage.join(run_dir, n) for n in checkpoint_names(run_dir)}
    intact = [(n, checkpoint_epoch(p)) for n, p in paths.items()
              if only_checkpoint_files(p) and checkpoint_problem(p) is None]
    doomed = retention_plan(intact, best_epoch)
    for name in doomed:
        fs, path = storage.filesystem(storage.join(run_dir, name))
        fs.delete_dir(path)
    return doomed


def only_checkpoint_files(directory: Location) -> bool:
    """Whether a directory holds exactly this project's checkpoint files (so it may be deleted)."""
    return sorted(storage.list_dir(directory)) == sorted([META_FILE, STATE_FILE])


def point_ray_snapshot_at(run_dir: Location, keep: ResumePoint) -> bool:
    """Make Ray Train's checkpoint-manager snapshot of the run list only checkpoints that
    exist and are not newer than `keep`, with `keep` as the latest, so `fit()` hands it to
    the workers (Ray refuses a snapshot that names a deleted checkpoint). Checkpoints
    passed over are renamed `skipped_<name>`, kept for inspection. False when the snapshot
    does not list `keep` (it is then moved aside and the workers are given `keep` directly)."""
    for name, _ in keep.skipped:
        src = storage.join(run_dir, name)
        if storage.exists(src):
            fs, path = storage.filesystem(src)
            fs.move(path, storage.filesystem(storage.join(run_dir, f"skipped_{name}"))[1])
    snapshot = storage.join(run_dir, RAY_SNAPSHOT_FILE)
    if not storage.is_file(snapshot):
        return False
    try:
        state = json.loads(storage.read_bytes(snapshot))
        results = state["checkpoint_results"]
        indices = state["checkpoint_report_indices"]
        chosen = next(r for r in results if r["checkpoint_dir_name"] == keep.name)
    except (KeyError, TypeError, ValueError, StopIteration):
        storage.write_bytes(storage.join(run_dir, f"skipped_{RAY_SNAPSHOT_FILE}"), storage.read_bytes(snapshot))
        fs, path = storage.filesystem(snapshot)
        fs.delete_file(path)
        return False
    limit = indices[results.index(chosen)]
    kept = [(r, i) for r, i in zip(results, indices, strict=True)
            if i <= limit and storage.exists(storage.join(run_dir, r["checkpoint_dir_name"]))]
    names = {r["checkpoint_dir_name"] for r, _ in kept}
    state["checkpoint_results"] = [r for r, _ in kept]
    state["checkpoint_report_indices"] = [i for _, i in kept]
    state["latest_checkpoint_result"] = chosen
    state["pending_training_results"] = []
    state["pending_validation_specs"] = []
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        state[key] = [n for n in state.get(key, []) if n in names]
    storage.write_text(snapshot, json.dumps(state))
    return True


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


def saved_with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the fields added to the project since it was written set to
    their defaults (what that run used: a new field's default keeps the old behaviour), so
    that a new field alone does not make an older checkpoint look incompatible."""
    defaults = config_to_dict(Config())
    return {**saved, **{section: {**defaults[section], **saved.get(section, {})}
                        for section in INCOMPATIBLE_ON_CHANGE if section in saved}}


def check_compatible(state: dict[str, Any], config: dict[str, Any], manifest_sha256: str) -> None:
    """Refuse to resume against another dataset or a config that changes the model."""
    if state.get("manifest_sha256") != manifest_sha256:
        raise CheckpointError(
            "the checkpoint was trained on another dataset (manifest sha256 "
            f"{str(state.get('manifest_sha256'))[:12]}… ≠ {manifest_sha256[:12]}…): resume with "
            "the same data.path/data.synthetic, or start a new run")
    saved = saved_with_defaults(state.get("config", {}))
    for section in INCOMPATIBLE_ON_CHANGE:
        if saved.get(section) != config.get(section):
            diff = {k: (saved.get(section, {}).get(k), v) for k, v in config.get(section, {}).items()
                    if saved.get(section, {}).get(k) != v}
            raise CheckpointError(f"cannot resume: config section '{section}' differs from the "
                                  f"checkpoint's (saved, now): {diff}; start a new run instead")
