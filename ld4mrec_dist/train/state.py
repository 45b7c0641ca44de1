"""What a rank's loop carries from epoch to epoch, and its checkpoint form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ld4mrec_dist.build import item_factors_of
from ld4mrec_dist.config import Config, config_to_dict
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.sampler import SamplerHistory


@dataclass
class LoopState:
    """Everything that must survive a restart, besides model and optimizer weights."""

    epoch: int = 0  # next epoch to run
    global_step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations since the last improvement (early-stopping patience)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation

    def select(self, metric: float) -> bool:
        """Record an evaluation's valid metric; True if it is the best so far."""
        if metric > self.best_metric:
            self.best_metric, self.best_epoch, self.bad_evals = metric, self.epoch, 0
            return True
        self.bad_evals += 1
        return False

    def best_row(self) -> dict[str, Any]:
        return next((r for r in self.history if r["epoch"] == self.best_epoch), {})


def checkpoint_state(full: dict[str, Any], model: LD4MRec, sampler: SamplerHistory, state: LoopState,
                     cfg: Config, manifest_sha256: str) -> dict[str, Any]:
    """A checkpoint's content; `full`: the engine's weights and optimizer states (with
    PowerSGD also every rank's hook state, "powersgd": engine.DataParallel.full_state;
    item-parallel also V_k gathered from its slices, "item_factors")."""
    return {
        **full,
        "item_factors": full["item_factors"] if "item_factors" in full else item_factors_of(model),
        "sampler_table": sampler.table_TH, "sampler_counts": sampler.counts_T,
        "epoch": state.epoch, "global_step": state.global_step,
        "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "bad_evals": state.bad_evals, "history": state.history,
        # No RNG state: every stream is reseeded from (seed, epoch, rank) at each epoch
        # start (engine.epoch_seed), so the seed in the config and the epoch restore them.
        "config": config_to_dict(cfg), "manifest_sha256": manifest_sha256,
    }


def restored_loop(saved: dict[str, Any]) -> tuple[SamplerHistory, LoopState]:
    """The sampler history and loop state of a checkpoint (the engine loads the weights)."""
    state = LoopState(epoch=saved["epoch"], global_step=saved["global_step"],
                      best_metric=saved["best_metric"], best_epoch=saved["best_epoch"],
                      bad_evals=saved["bad_evals"], history=list(saved["history"]))
    return SamplerHistory(saved["sampler_table"], saved["sampler_counts"]), state


def best_model_state(full: dict[str, Any], model: LD4MRec, cfg: Config, manifest_sha256: str,
                     row: dict[str, Any]) -> dict[str, Any]:
    """best_model.pt: the best weights, with what scoring needs."""
    factors = full["item_factors"] if "item_factors" in full else item_factors_of(model)
    return {"model": full["model"], "item_factors": factors,
            "config": config_to_dict(cfg), "manifest_sha256": manifest_sha256,
            "epoch": row["epoch"], "metrics": row}
