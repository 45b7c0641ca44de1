"""Checkpoints that load across layouts (docs/design.md §6.1): torch.distributed.checkpoint (DCP),
or the trainer's own single-process format gathered from and resharded into the shards.

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

`plain_state` / `load_plain_state` instead gather the shards into the exact dictionaries a
single-process run checkpoints (model, Adam, SparseAdam `state_dict`s) and reshard them on
load, so the trainer's checkpoint and best_model.pt formats (train/state.py) serve every
layout, a DDP run's checkpoint resumes item-parallel and the other way round. The price is
the full C-Net state on rank 0 while it is written (the DCP form never gathers it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
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
    saved per parameter name only: the groups differ between layouts (`item_param_groups`
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


# ---------------------------------------------------------------- the single-process format


def _dense_names(model: LD4MRec) -> list[str]:
    """C-Net's parameter names in `build.dense_parameters` order: the indices of the
    single-process Adam's state."""
    return [n for n, _ in model.named_parameters() if n != "z_in.weight"]


def plain_state(model: LD4MRec, opts: Optimizers) -> dict[str, Any]:
    """{"model", "optimizer", "zin_optimizer"} exactly as a single-process run holds them
    (`model.state_dict()`, Adam's and SparseAdam's `state_dict()`, one Adam group indexed
    in `dense_parameters` order), gathered from the shards: what the trainer's own
    checkpoint format (train/state.py) stores. Every rank calls it; rank 0 receives the
    full tensors (on CPU), the other ranks empty model and Adam states."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=full)
    optim_sd = get_optimizer_state_dict(model, opts.dense, options=full)
    names = _dense_names(model)
    fqn_state = cast(dict[str, Any], optim_sd.get("state", {}))  # empty off rank 0
    hyper = {k: v for k, v in opts.dense.param_groups[0].items() if k != "params"}
    adam = {"state": {i: fqn_state[n] for i, n in enumerate(names) if n in fqn_state},
            "param_groups": [{**hyper, "params": list(range(len(names)))}]}
    return {"model": model_sd, "optimizer": adam, "zin_optimizer": opts.z_in.state_dict()}


def load_plain_state(model: LD4MRec, opts: Optimizers, saved: dict[str, Any]) -> None:
    """Load `plain_state`'s form (or a single-process / DDP run's checkpoint) into this
    layout: every rank passes the full state and keeps its shards."""
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, saved["model"], options=full)
    names = _dense_names(model)
    groups = cast(list[dict[str, Any]], get_optimizer_state_dict(model, opts.dense)["param_groups"])
    fqn_state = {names[int(i)]: st for i, st in saved["optimizer"]["state"].items()}
    set_optimizer_state_dict(model, opts.dense, {"state": fqn_state, "param_groups": groups}, options=full)
    opts.z_in.load_state_dict(saved["zin_optimizer"])
