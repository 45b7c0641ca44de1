"""Fault injection, a test hook: the last rank dies once, hard, after a given global step.

It wraps the epoch's batch iterator, so the training loop itself carries no test code;
with `train.fail_at_step` < 1 (the default) the iterator is returned untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from data_pipeline import storage
from ld4mrec_dist import dist
from ld4mrec_dist.run_dir import FAULT_MARKER, RunDir, file_in

T = TypeVar("T")


def with_injected_fault(batches: Iterable[T], fail_at_step: int, first_step: int, run_dir: RunDir) -> Iterable[T]:
    """`batches`, unless this is the last rank and global step `fail_at_step` falls in this
    epoch (whose first batch is global step `first_step` + 1): then the process exits once
    that step is done, the first time only (a marker in the run directory remembers it)."""
    if fail_at_step < 1 or dist.rank() != dist.world_size() - 1 or fail_at_step <= first_step:
        return batches
    if storage.exists(file_in(run_dir, FAULT_MARKER)):
        return batches
    return _dying_after(iter(batches), fail_at_step - first_step, fail_at_step, run_dir)


def _dying_after(batches: Iterator[T], n: int, global_step: int, run_dir: RunDir) -> Iterator[T]:
    done = 0
    for batch in batches:
        if done == n:
            break
        yield batch
        done += 1
    if done < n:
        return  # the epoch ended before the step
    storage.write_text(file_in(run_dir, FAULT_MARKER), f"killed at step {global_step}\n")
    print(f"[ld4mrec] fault injection: rank {dist.rank()} exits at step {global_step}", flush=True)
    os._exit(1)
