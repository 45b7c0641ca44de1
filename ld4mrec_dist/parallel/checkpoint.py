"""Checkpoints that load across layouts (docs/design.md §6.1): torch.distributed.checkpoint (DCP).

DCP stores every tensor by its fully qualified name and global shape, with each rank
writing its own shards; a load reads, for each tensor of the target state dict, the part
that target holds. So a checkpoint saved by W_item ranks (FC_in's and FC_out's weights
as DTensor shards) loads into a plain single-process LD4MRec (full tensors) and the other
way round, Adam's moments included (`get_state_dict` keys them by parameter name).

z_in's SparseAdam is saved beside it as plain tensors (its state is not sharded, and
`get_state_dict` cannot initialise a SparseAdam: it would need a sparse gradient).
The data-derived buffers (V_K, item features, degrees) are not saved, as in the single-
process checkpoint format (docs/design.md §7): rebuild the model from the dataset first.
Works without a process group (one process) and with one (every rank calls it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load
from torch.distributed.checkpoint.state_dict_saver import save

from ld4mrec_dist.build import Optimizers
from ld4mrec_dist.model import LD4MRec


def _z_in_state(opts: Optimizers) -> dict[str, torch.Tensor]:
    """SparseAdam's state of z_in as tensors (zeros and step 0 before its first step)."""
    weight = opts.z_in.param_groups[0]["params"][0]
    state = opts.z_in.state.get(weight, {})
    return {
        "step": torch.tensor(int(state.get("step", 0)), dtype=torch.int64),
        "exp_avg": state.get("exp_avg", torch.zeros_like(weight)),
        "exp_avg_sq": state.get("exp_avg_sq", torch.zeros_like(weight)),
    }


def _state(model: LD4MRec, opts: Optimizers) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(what DCP saves and loads, Adam's parameter groups of this layout). Adam's state is
    saved per parameter name only: the groups differ between layouts (`build_item_optimizers`
    splits them) and their hyperparameters come from the config."""
    model_sd, optim_sd = get_state_dict(model, opts.dense)
    groups = cast(list[dict[str, Any]], optim_sd["param_groups"])
    return {"model": model_sd, "adam": optim_sd["state"], "z_in_optim": _z_in_state(opts)}, groups


def save_sharded(directory: str | Path, model: LD4MRec, opts: Optimizers) -> None:
    """Model parameters and schedule, Adam's and SparseAdam's states, into a DCP directory."""
    save(_state(model, opts)[0], checkpoint_id=str(directory))


def load_sharded(directory: str | Path, model: LD4MRec, opts: Optimizers) -> None:
    """Load `save_sharded`'s directory into this layout's model and optimizers (in place)."""
    state, groups = _state(model, opts)
    load(state, checkpoint_id=str(directory))
    set_state_dict(model, opts.dense, model_state_dict=state["model"],
                   optim_state_dict={"state": state["adam"], "param_groups": groups})
    z_in = state["z_in_optim"]
    weight = opts.z_in.param_groups[0]["params"][0]
    if int(z_in["step"]) > 0:
        opts.z_in.state[weight] = {"step": int(z_in["step"]), "exp_avg": z_in["exp_avg"],
                                   "exp_avg_sq": z_in["exp_avg_sq"]}
    else:
        opts.z_in.state.pop(weight, None)
