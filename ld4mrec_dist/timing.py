"""Wall time per named piece of a step: the loop reports it, the benchmarks print it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

# timer("piece") -> a context manager that adds the piece's wall time to a total.
StepTimer = Callable[[str], AbstractContextManager[object]]


class PieceTimer:
    """`with timer("forward"): ...` adds the block's wall time to `timer.total["forward"]`."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t0

    def seconds(self, *names: str) -> float:
        return sum(self.total.get(n, 0.0) for n in names)


def untimed(_: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()
