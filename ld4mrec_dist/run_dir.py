"""The run directory: the one owner of the name of every file a run writes at its top level.

A run directory is a local folder or an object-store URI (`RunDir`). Ray Train adds its
`checkpoint_*` folders beside these files (their inside belongs to `train/checkpoint.py`).

    config.yaml          the run's full configuration (`--resume` reads it back)
    config.yaml.sha256   its checksum, written after it
    item_factors.npy     V_k [I, K] of the train matrix, fitted once by the driver (or by the
                         ranks, then written by rank 0: model.svd_solver=distributed)
    item_factors.npy.sha256   its checksum (`sha256sum -c` format), written after it
    metrics.jsonl        one row per evaluation, rewritten whole (object stores cannot append)
    best_model.pt        the best valid epoch's weights and what scoring needs
    best_model.pt.sha256 its checksum, written after it
    final_metrics.json   best epoch, its valid/test metrics, wall time (written at the end)
    curves.png           loss and valid/test curves
    workers.json         where each rank of the latest worker group runs (node id, IP, pid)
    run.log              what Ray and the workers printed beyond the console's lines (tracebacks)
    .fault_injected      marker of a test-only fault injection (fires once per run)

It also says where a run's directory and dataset are: `resolve_run_dir`, `resolve_dataset`,
and, inside `ray job submit --working-dir`, where relative paths land (`anchor_job_paths`).

The files that are read back (item_factors.npy by every worker, best_model.pt by
`jobs/recommend.py`, config.yaml by `--resume`) are vouched for as checkpoints are: a `<file>.sha256` written after the
file, and checked on every read, so a bit flip or a partial copy is refused naming the
file instead of giving other factors or other recommendations.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset
from data_pipeline.errors import DataError
from ld4mrec_dist.config import Config

CONFIG_FILE = "config.yaml"
ITEM_FACTORS_FILE = "item_factors.npy"
METRICS_FILE = "metrics.jsonl"
BEST_MODEL_FILE = "best_model.pt"
FINAL_METRICS_FILE = "final_metrics.json"
CURVES_FILE = "curves.png"
WORKERS_FILE = "workers.json"
LOG_FILE = "run.log"
FAULT_MARKER = ".fault_injected"

CHECKSUM_SUFFIX = ".sha256"

RunDir = Path | str  # a local directory, or an object-store URI string

# Ray's temporary copy of `ray job submit --working-dir`: relative paths would land there.
RAY_JOB_WORKING_DIR_MARK = "runtime_resources/working_dir_files/_ray_pkg_"
HOME_ENV = "LD4MREC_HOME"
DEFAULT_HOME = "~/ld4mrec"


class ArtefactDamaged(DataError):
    """A file the run wrote no longer matches its checksum (or has none); names the file."""


def run_location(location: str) -> RunDir:
    """Path for a local location (so callers may use `/`), the URI string otherwise."""
    return location if storage.is_uri(location) else Path(location)


def file_in(run_dir: RunDir, name: str) -> str:
    """The location of one of the run directory's files (a name above)."""
    return storage.join(run_dir, name)


def write_vouched(run_dir: RunDir, name: str, data: bytes) -> None:
    """`name` (atomically), then `name.sha256` vouching for it: a reader never sees a
    checksum for a file that is not all there."""
    storage.write_bytes(file_in(run_dir, name), data)
    storage.write_text(file_in(run_dir, name + CHECKSUM_SUFFIX), f"{hashlib.sha256(data).hexdigest()}  {name}\n")


def read_vouched(run_dir: RunDir, name: str) -> bytes:
    """The bytes of `name`, once its `.sha256` vouches for them; ArtefactDamaged naming the file otherwise."""
    path = file_in(run_dir, name)
    if not storage.is_file(path + CHECKSUM_SUFFIX):
        raise ArtefactDamaged(
            f"{path} has no {name}{CHECKSUM_SUFFIX} beside it (written by a version before checksums, or its "
            f"write was cut short), so nothing vouches for it; train again, or if you trust the file, record its "
            f"checksum: cd {storage.parent_of(path)} && sha256sum {name} > {name}{CHECKSUM_SUFFIX}")
    data = storage.read_bytes(path)
    if not _vouched_for(path, data):
        raise ArtefactDamaged(f"{path} is damaged: its sha256 differs from {name}{CHECKSUM_SUFFIX} (changed since "
                              "the run wrote it: bit rot, a partial copy or an edit); train again")
    return data


def check_saved_config(run_dir: RunDir) -> None:
    """config.yaml is what a resume starts from: ArtefactDamaged when it differs from what the
    run wrote. One without a checksum (a run from before checksums) is taken as it is."""
    path = file_in(run_dir, CONFIG_FILE)
    if storage.is_file(path + CHECKSUM_SUFFIX) and not _vouched_for(path, storage.read_bytes(path)):
        raise ArtefactDamaged(
            f"{path} differs from what the run wrote ({CONFIG_FILE}{CHECKSUM_SUFFIX}): restore it and pass changes "
            f"as overrides (--resume {run_dir} train.epochs=…); if you edited it on purpose, delete "
            f"{CONFIG_FILE}{CHECKSUM_SUFFIX}")


def _vouched_for(path: str, data: bytes) -> bool:
    """Whether `data` (the bytes of `path`) match the digest in `path.sha256`."""
    expected = (storage.read_text(path + CHECKSUM_SUFFIX).split() or [""])[0]
    return hashlib.sha256(data).hexdigest() == expected


def read_item_factors(run_dir: RunDir) -> np.ndarray:
    """float32 [I, K]: the V_k the driver wrote (checksum verified)."""
    return np.load(io.BytesIO(read_vouched(run_dir, ITEM_FACTORS_FILE)))


def write_item_factors(run_dir: RunDir, v_IK: np.ndarray) -> None:
    write_vouched(run_dir, ITEM_FACTORS_FILE, storage.bytes_of_npy(np.ascontiguousarray(v_IK, dtype=np.float32)))


def rewrite_metrics(run_dir: RunDir, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl = the loop's history: rows of epochs lost to a failure vanish."""
    storage.write_text(file_in(run_dir, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history))


# ---------------------------------------------------------------- where a run and its dataset are


def in_ray_job_working_dir() -> bool:
    """True inside `ray job submit --working-dir …`, whose current directory is a temporary copy."""
    return RAY_JOB_WORKING_DIR_MARK in os.getcwd().replace(os.sep, "/")


def persistent_home() -> Path:
    """Where relative paths of a Ray job resolve: $LD4MREC_HOME, default ~/ld4mrec (on the driver's node)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def anchored_path(value: str) -> str:
    """A relative local path made absolute under `persistent_home()` inside a Ray job's
    temporary working directory; anything else unchanged."""
    if not value or storage.is_uri(value) or Path(value).expanduser().is_absolute() or not in_ray_job_working_dir():
        return value
    return str(persistent_home() / value)


def job_path_help(key: str, given: str, resolved: str, problem: str) -> str:
    """Why a relative path of a Ray job names nothing, how it was resolved, and the fixes."""
    return (f"{key}={given} resolved to {resolved}: {problem}. Inside a Ray job (`ray job submit "
            f"--working-dir`) relative paths resolve under ${HOME_ENV} ({persistent_home()}), not in Ray's "
            "temporary copy of the working directory. Pass an absolute path or a URI that every node can read "
            f"(shared storage, s3://, gs://), or set {HOME_ENV} to the directory that holds {given}: "
            f"ray job submit --runtime-env-json '{{\"env_vars\": {{\"{HOME_ENV}\": \"/abs/dir\"}}}}' …")


def anchor_job_paths(cfg: Config) -> None:
    """Inside a Ray job, move relative data/run paths out of Ray's temporary copy of the
    working directory (deleted later) to `persistent_home()`, and say so."""
    moved = []
    for section, name in (("data", "path"), ("data", "root"), ("run", "storage"), ("run", "resume")):
        part = getattr(cfg, section)
        value = getattr(part, name)
        if anchored_path(value) != value:
            setattr(part, name, anchored_path(value))
            moved.append(f"{section}.{name}={value} → {getattr(part, name)}")
    if moved:
        print(f"[ld4mrec] Ray job: relative paths resolve under ${HOME_ENV} ({persistent_home()}), not in "
              f"Ray's temporary copy of --working-dir: {'; '.join(moved)}", flush=True)


def resolve_dataset(cfg: Config) -> RunDir:
    """The prepared dataset: `data.path` (local or URI), or the synthetic one (prepared once)."""
    if cfg.data.path:
        return run_location(storage.normalize(cfg.data.path))
    from data_pipeline.prepare import prepare_synthetic

    root = Path(cfg.data.root).expanduser().resolve()
    return Path(prepare_synthetic(cfg.data.synthetic, cfg.data.setting, root, seed=cfg.data.seed))


def resolve_run_dir(cfg: Config, ds: PreparedDataset) -> RunDir:
    """The run's directory: the one `run.resume` names, or a new, empty one under `run.storage`."""
    if cfg.run.resume:
        run_dir = storage.normalize(cfg.run.resume)
        if not storage.list_dir(run_dir):
            raise FileNotFoundError(f"--resume {run_dir}: no such run directory (or it is empty)")
        return run_location(run_dir)
    name = cfg.run.name or f"{ds.name}-{cfg.model.ablation}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage.join(cfg.run.storage, name)
    if storage.list_dir(run_dir):
        raise FileExistsError(f"run directory {run_dir} exists: choose another run.name, "
                              f"or resume it with --resume {run_dir}")
    storage.make_dirs(run_dir)
    return run_location(run_dir)
