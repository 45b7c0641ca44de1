"""Counting the bytes of collectives, DTensor's included (for tests and the scaling benchmark).

`CollectiveBytes` is a TorchDispatchMode: every collective that reaches the dispatcher —
DTensor's functional collectives (`_c10d_functional.*`) and `torch.distributed`'s own calls
(`c10d.*`) — is recorded as (op, bytes), where bytes is the size of its first argument: the
tensors all-reduced, or for an all-gather the output lists (what the rank receives, its own
part included). Collectives issued from C++ (DDP's reducer) do not pass through it; count
those with a DDP communication hook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_COLLECTIVES = ("allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter", "broadcast", "alltoall")


class CollectiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's class is untyped
    """Records (op name, bytes) of each collective run while the mode is active."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: list[tuple[str, int]] = []

    @property
    def total(self) -> int:
        return sum(n for _, n in self.calls)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        name = str(func)
        if func.namespace in ("c10d", "_c10d_functional") and any(c in name for c in _COLLECTIVES) and args:
            size = sum(t.numel() * t.element_size() for t in tree_leaves(args[0]) if isinstance(t, torch.Tensor))
            self.calls.append((name, size))
        return func(*args, **(kwargs or {}))
