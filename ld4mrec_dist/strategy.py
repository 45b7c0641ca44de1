"""How C-Net's gradients cross ranks at run time (`scaling.strategy`): DDP's communication
hooks and PowerSGD's state in checkpoints. Choosing a strategy (`auto`) and predicting its
cost is `scaling_model.py`'s job, read by the driver and the benchmarks only.

Shapes: I items, D hidden width d, B users per rank and step (train.batch_size), W ranks,
G ranks of an item-parallel group. The design is docs/design.md §9.

Strategies (all but `auto` are exact names of `scaling.strategy`):

- `ddp`: DDP's own all-reduce of C-Net's float32 gradients, 4·P bytes per step where
  P ≈ 2·I·D is C-Net's parameter count (FC_in and FC_out hold I·D each).
- `ddp_bf16`: torch's `bf16_compress_hook`: each bucket is cast to bfloat16 (and divided by
  W) before the all-reduce and cast back after: 2·P bytes, gradients rounded to 8 bits of
  mantissa.
- `powersgd`: torch's `powerSGD_hook` (Vogels et al., 2019): every gradient matrix n × m
  that compresses at least `min_compression_rate` = 2× is replaced by a rank-r
  factorisation P [n, r] Q [m, r] (two all-reduces), the other tensors (biases) are
  all-reduced as they are; error feedback keeps the residual for the next step and warm
  start reuses Q. Bytes per step: 4·(Σ_compressed (n + m)·r + Σ_uncompressed numel),
  ≈ 4·2·(I + D)·r instead of 4·2·I·D for the two item layers (D / r times less). Rank
  r = `POWERSGD_RANK`; the first `POWERSGD_START_ITER` steps run plain all-reduce
  (torch's documented warm-up; its minimum with error feedback is 2). Its state (step
  count, each rank's error-feedback buffers, the warm-start P and Q) is checkpointed:
  rank 0 gathers every rank's (`powersgd_state_dict`) and a resume under the same world
  size gives each rank its own back (`load_powersgd_state`, after one zero-loss step that
  lets DDP rebuild its buckets: the state is keyed by bucket), so the run continues bit
  for bit as if uninterrupted; under another world size it starts afresh (one line says so).
- `item_parallel`: ld4mrec_dist/parallel/ (torch's tensor-parallel API; run by the trainer's
  engine, not by a DDP hook): FC_in's rows and
  FC_out's columns are sharded over an item group of G ranks that all see the same B users;
  per step they all-reduce two [B, D] float32 activations (FC_in's output forward, FC_out's
  input gradient backward) and the per-user loss sums over the slices, instead of the I·D
  gradients; the item-independent layers are replicated (same batch, same gradients).
  Per rank: I/G of the item arithmetic and of the item layers' memory, all of the rest.
  A strategy is runnable when it is in `WIRED`; `check_available` refuses the others.
- `auto`: `scaling_model.choose_strategy`, given W and the shapes, resolved once by the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ld4mrec_dist.config import STRATEGIES

WIRED = ("ddp", "ddp_bf16", "powersgd", "item_parallel")
"""The strategies the trainer can run (item_parallel through train/engine.py's item-parallel engine)."""

POWERSGD_RANK = 4
"""r of `powersgd`. torch's guidance: start at 1 and double until quality holds (1–4 is
typical); C-Net's item layers are I × D with D = 256, so r = 4 still compresses them 64×."""
POWERSGD_START_ITER = 10
"""Steps of plain all-reduce before PowerSGD starts (torch's `start_powerSGD_iter`, whose
default 1000 would leave a MovieLens-1M run — ~12 steps an epoch on 2 ranks — uncompressed
for its whole length; torch suggests ~10 % of the steps, its own example uses 10)."""
POWERSGD_MIN_COMPRESSION = 2.0
"""torch's `min_compression_rate` default: a matrix is compressed only if that saves 2×."""


class StrategyUnavailable(ValueError):
    """A strategy that the config accepts but the trainer cannot run yet."""


def check_available(name: str) -> None:
    """Raise StrategyUnavailable (naming the alternatives) unless the trainer can run `name`."""
    if name not in STRATEGIES:
        raise ValueError(f"scaling.strategy={name!r}: choose one of {STRATEGIES}")
    if name not in (*WIRED, "auto"):
        raise StrategyUnavailable(
            f"scaling.strategy={name!r}: the item-parallel C-Net (ld4mrec_dist/parallel/) is not wired "
            f"into the trainer yet; use one of {(*WIRED, 'auto')} (the scaling model still predicts "
            f"item_parallel: python benchmarks/scaling.py)")


# ---------------------------------------------------------------- hooks on a DDP module


def register_comm_hook(ddp: Any, name: str, start_iter: int = POWERSGD_START_ITER,
                       rank: int = POWERSGD_RANK) -> Any:
    """Register strategy `name`'s DDP communication hook on `ddp`; returns the hook's state.

    `ddp` is a `DistributedDataParallel` (what `build.wrap_cnet` makes). `ddp` registers
    nothing (DDP's built-in all-reduce); `ddp_bf16` torch's `bf16_compress_hook`;
    `powersgd` torch's `powerSGD_hook` with a `PowerSGDState` of rank `rank`, plain
    all-reduce for the first `start_iter` steps, error feedback and warm start on (torch's
    defaults). The state is also kept on `ddp` (`hook_state`), so that the trainer's
    checkpoints carry it: `powersgd_state_dict` / `load_powersgd_state`. `auto` must be
    resolved first (`scaling_model.resolve_strategy`); `item_parallel` is not a hook and raises ValueError.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if name == "auto":
        raise ValueError("scaling.strategy=auto: resolve it first (scaling_model.resolve_strategy)")
    if name == "item_parallel":
        raise ValueError("scaling.strategy=item_parallel is not a DDP hook: C-Net is sharded by "
                         "ld4mrec_dist/parallel/, not wrapped in DDP")
    check_available(name)
    if name == "ddp":
        return None
    if name == "ddp_bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook if _is_nccl(ddp) else bf16_compress_hook_gloo())
        return None
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=start_iter,
        min_compression_rate=POWERSGD_MIN_COMPRESSION, use_error_feedback=True, warm_start=True)
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook if _is_nccl(ddp) else powersgd_hook_in_order())
    setattr(ddp, _HOOK_STATE, state)
    return state


_HOOK_STATE = "ld4mrec_hook_state"


def hook_state(cnet: Any) -> Any:
    """The state `register_comm_hook` registered on `cnet` (a DDP module): a `PowerSGDState`
    for `powersgd`, None for the stateless hooks and for a C-Net outside DDP."""
    return getattr(cnet, _HOOK_STATE, None)


# ---------------------------------------------------------------- PowerSGD in checkpoints

POWERSGD_SETTINGS = ("matrix_approximation_rank", "start_powerSGD_iter", "min_compression_rate",
                     "orthogonalization_epsilon", "use_error_feedback", "warm_start",
                     "batch_tensors_with_same_shape")
"""`PowerSGDState`'s hyperparameters: a saved state is restored only under the same values."""


def powersgd_state_dict(state: Any) -> dict[str, Any]:
    """This rank's `PowerSGDState` as `torch.load(weights_only=True)` reads it back: every
    slot that torch's own `__getstate__` pickles (all but the process group), tensors on
    the CPU (the error-feedback buffer of each DDP bucket, per rank; the warm-start P and
    Q, equal on every rank), the numpy RandomState that seeds Q's first draw as its plain
    MT19937 state, the rest ints, floats and bools. CPU tensors are the state's own, not
    copies: serialise it (or gather it) before the next step."""
    out: dict[str, Any] = {}
    for slot in type(state).__slots__:
        value = getattr(state, slot)
        if slot == "process_group":
            continue
        if slot == "rng":
            name, keys, pos, has_gauss, cached = value.get_state()
            import torch

            value = {"name": str(name), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        elif isinstance(value, dict):  # error_dict, p_memory_dict, q_memory_dict: bucket index -> tensor
            value = {int(k): v.detach().cpu() for k, v in value.items()}
        out[slot] = value
    return out


def powersgd_restore_problem(state: Any, saved: Sequence[dict[str, Any]] | None, world: int) -> str | None:
    """Why `saved` (every rank's `powersgd_state_dict`, in rank order, as a checkpoint holds
    them) cannot be restored into `state` on `world` ranks, or None when it can: no saved
    state, another world size (each rank's error feedback is its own), other hyperparameters
    (`POWERSGD_SETTINGS`). Depends on `saved` only: every rank, reading the same
    checkpoint, decides alike (a rank that restored among ranks that did not would issue
    other collectives)."""
    if not saved:
        return "the checkpoint holds no PowerSGD state"
    if len(saved) != world:
        return f"the checkpoint's PowerSGD state is of {len(saved)} ranks, this run has {world}"
    changed = [k for k in POWERSGD_SETTINGS if saved[0].get(k) != getattr(state, k)]
    if changed:
        return "PowerSGD settings changed: " + ", ".join(f"{k} {saved[0].get(k)} -> {getattr(state, k)}"
                                                         for k in changed)
    return None


def load_powersgd_state(state: Any, saved: dict[str, Any], device: Any) -> None:
    """Put one rank's `powersgd_state_dict` back into `state`, in place (the registered hook
    keeps reading that object), its tensors onto `device`. The error buffers and P, Q are
    keyed by DDP bucket index: they fit a DDP whose buckets are those of the saved run."""
    import numpy as np

    for slot, value in saved.items():
        if slot == "rng":
            rng = np.random.RandomState()
            rng.set_state((value["name"], value["keys"].numpy().astype(np.uint32), value["pos"],
                           value["has_gauss"], value["cached_gaussian"]))
            value = rng
        elif isinstance(value, dict):
            value = {int(k): v.to(device) for k, v in value.items()}
        setattr(state, slot, value)


def _is_nccl(ddp: Any) -> bool:
    import torch

    return bool(torch.cuda.is_available() and ddp.process_group.name() == "nccl")


def powersgd_hook_in_order() -> Any:
    """torch's `powerSGD_hook`, waited for before DDP hands over the next bucket: for gloo.

    The hook issues a bucket's P and Q all-reduces from future callbacks; on gloo those can
    interleave with the next bucket's first all-reduce in a different order on each rank
    (seen here: "Received data size doesn't match expected size" as soon as C-Net spans two
    buckets). Waiting keeps every rank's collectives in one order; it gives up overlapping
    the compression with backward, which CPU ranks do not have anyway."""
    import functools

    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    @functools.wraps(powerSGD_hook.powerSGD_hook)  # torch's name and annotations, which DDP checks
    def hook(state: Any, bucket: Any) -> Any:
        fut = powerSGD_hook.powerSGD_hook(state, bucket)
        fut.wait()
        return fut

    hook.__name__ = hook.__qualname__ = "powersgd_hook_in_order"
    return hook


def bf16_compress_hook_gloo() -> Any:
    """torch's `bf16_compress_hook` for a gloo process group (CPU). DDP refuses that hook by
    its name unless CUDA and NCCL ≥ 2.10 are there; this is torch's same implementation
    (`default_hooks._compress_hook` with bfloat16: cast, divide by W, all-reduce, cast
    back; gloo supports bfloat16 on CPU) under another name, with torch's annotations."""
    import functools

    import torch
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hook = functools.partial(default_hooks._compress_hook, torch.bfloat16)
    hook.__name__ = hook.__qualname__ = "bf16_compress_hook_gloo"  # type: ignore[attr-defined]
    return hook


def hook_note(name: str) -> str:
    """What `name` does to the gradients, for logs and the README."""
    return {"ddp": "float32 all-reduce (exact)",
            "ddp_bf16": "bfloat16 all-reduce (gradients rounded to 8 mantissa bits)",
            "powersgd": f"PowerSGD rank {POWERSGD_RANK} after {POWERSGD_START_ITER} plain steps, error feedback",
            "item_parallel": "item-sharded FC_in/FC_out, activations exchanged (model only)"}.get(name, name)
