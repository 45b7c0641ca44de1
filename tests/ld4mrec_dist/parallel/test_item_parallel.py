"""Item-parallel LD4MRec (ld4mrec_dist/parallel/) against the single-process model, on 2 real
gloo processes (benchmarks.harness.gloo_spawn): the same forward process gives the same loss,
gradients, updated parameters and sampler history to 1e-5; the merged top-k equals the
single-process one; checkpoints load across the 1-rank and 2-rank layouts; the bytes each
rank moves are counted and equal the formula. On 4 processes: W_item = 4 (one item group)
against the single-process step and top-k, and a 2 × 2 ("data", "item") mesh against plain
DDP. At 2 and 4 item ranks the model built sharded holds its slice only and its conditions
(partial sums + one all-reduce) are the single-process ones. The distributed SVD
(ld4mrec_dist/svd_dist.py) on 3 and 2 ranks (sub-groups of the 4) and on the 2 × 2 mesh,
against a dense SVD and the one-process result."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.harness import free_port, gloo_spawn
from ld4mrec_dist import dist as sync
from ld4mrec_dist.build import build_optimizers, wrap_cnet
from ld4mrec_dist.config import Config, DiffusionSection, ModelSection, TrainSection
from ld4mrec_dist.eval.evaluator import evaluate, evaluate_ranking
from ld4mrec_dist.eval.metrics import mask_items
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.checkpoint import load_plain_state, load_sharded, plain_state, save_sharded
from ld4mrec_dist.parallel.item import SliceDraw
from ld4mrec_dist.parallel.topk import merge_topk, topk_ordered
from ld4mrec_dist.sampler import SamplerHistory, sample_steps
from ld4mrec_dist.step import train_step

U, I, D, K, B = 9, 11, 8, 3, 4  # 11 items on 2 ranks: slices of 6 and 5
FEATS = (("text", 5), ("image", 4))
WORLD = 2
USERS = torch.tensor([1, 4, 7, 8])
DATA_USERS = (torch.tensor([0, 2, 4, 5]), torch.tensor([3, 4, 6, 8]))  # a (2, 1) mesh: user 4 on both
SEEDS = (11, 12)  # forward-process seeds of step 1 and step 2
TOL = {"rtol": 1e-5, "atol": 1e-5}
WIDTH = K + sum(d for _, d in FEATS)  # floats per user of the conditions' all-reduce


def _cfg(input_norm: str = "none") -> Config:
    # sr_prob large enough that the soft-reconstruction mask hits entries of both slices;
    # grad_clip small enough that clipping is active. Adam's first step moves every parameter
    # by about lr (≫ the 1e-5 tolerance); a larger lr would turn the float noise of the
    # near-zero gradients (g / (|g| + eps)) into differences above it.
    return Config(model=ModelSection(hidden=D, svd_rank=K, input_norm=input_norm),
                  diffusion=DiffusionSection(steps=5, sr_prob=0.3, sr_gamma=0.1, history=2),
                  train=TrainSection(batch_size=B, grad_clip=0.05, lr=1e-3))


def _data() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(U, I, generator=g) < 0.3).float()
    r[:, 0] = 1.0  # every user has a click
    feats = {name: torch.randn(I, d, generator=g) for name, d in FEATS}
    return r, feats, torch.randn(I, K, generator=g), r.sum(0)


def _model(cfg: Config) -> LD4MRec:
    r, feats, v, deg = _data()
    torch.manual_seed(cfg.train.seed)
    return LD4MRec(cfg.model, cfg.diffusion, U, I, item_factors=v, item_features=feats, item_degree=deg)


def _built(cfg: Config, mesh) -> tuple[LD4MRec, object]:
    """The model built sharded (parallel.build): each rank reads only its slice of the data."""
    from ld4mrec_dist.parallel.build import build_sharded_model, mesh_item_range

    r, feats, v, deg = _data()
    lo, hi = mesh_item_range(mesh, I)
    return build_sharded_model(cfg, U, I, mesh, v[lo:hi], {n: f[lo:hi] for n, f in feats.items()}, deg[lo:hi],
                               torch.device("cpu"))


def _conditions(model: LD4MRec) -> dict[str, np.ndarray]:
    c_BK, prefs = model.conditions(_rows())
    return {"c": _np(c_BK), **{f"e{j}": _np(e) for j, e in enumerate(prefs)}}


NORMS = Config(model=ModelSection(hidden=D, svd_rank=K, feature_norm="standardize", collab_norm="unit"))
"""Conditions whose scaling is not linear in the items: μ, σ over all items, c_u / ‖c_u‖."""


def _built_report(cfg: Config, mesh) -> dict:
    """A sharded-built model: its item shards, replicated parameters, held buffers, the
    conditions (also under NORMS) and the Adam moments after one step."""
    from ld4mrec_dist.parallel.item import item_parallel_step, item_param_groups, local_tensor

    model, layout = _built(cfg, mesh)
    out = {"shards": {n: _np(local_tensor(p)) for n, p in model.named_parameters() if n.startswith("cnet.fc_")},
           "replicated": {n: _np(local_tensor(p)) for n, p in model.named_parameters() if not n.startswith("cnet.fc_")},
           "buffers": {n: tuple(b.shape) for n, b in model.named_buffers() if n.startswith("item_")},
           "conditions": _conditions(model), "norm_conditions": _conditions(_built(NORMS, mesh)[0])}
    opts = build_optimizers(model, cfg, item_param_groups(model))
    t_B, target_BI, noise_BI = _full_draw(model, _history(model, cfg).probabilities(cfg.diffusion), SEEDS[0])
    draw = SliceDraw(t_B, target_BI[:, layout.lo:layout.hi], noise_BI[:, layout.lo:layout.hi])
    item_parallel_step(model, layout, opts, _history(model, cfg), USERS, _rows(), (None, None), cfg, draw=draw)
    out["moments"] = {n: tuple(local_tensor(opts.dense.state[p]["exp_avg"]).shape)
                      for n, p in model.named_parameters() if p in opts.dense.state}
    return out


def _history(model: LD4MRec, cfg: Config) -> SamplerHistory:
    """A full history, so that p_t is not uniform and the importance weights differ from 1."""
    h = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
    t_N = torch.arange(1, 6).repeat(2)
    h.record(t_N, torch.linspace(0.1, 2.0, 10, dtype=torch.float64))
    return h


def _rows(users: torch.Tensor = USERS) -> torch.Tensor:
    return _data()[0][users].to_sparse_csr()


def _full_draw(model: LD4MRec, p_T: torch.Tensor, seed: int,
               users: torch.Tensor = USERS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t, f_s(x_in) and ε over all I items, drawn as LD4MRec.forward draws them from a
    generator seeded `seed` (same functions, same order)."""
    g = torch.Generator().manual_seed(seed)
    t_B = sample_steps(p_T, B, g)
    target_BI = model.reconstruction_target(_rows(users).to_dense(), g)
    return t_B, target_BI, torch.randn((B, I), generator=g)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to_dense().numpy().copy()


def _flat(tree, prefix: str = "") -> dict:
    """A nested state dict as {"a/b/c": numpy array or plain value}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, torch.Tensor):
        return {prefix[:-1]: _np(tree)}
    return {prefix[:-1]: tree.tolist() if isinstance(tree, np.ndarray) else tree}


def _eval_data():
    """All U users' train rows as input and mask, a disjoint random truth, as EvalData."""
    import scipy.sparse as sp

    from ld4mrec_dist.eval.evaluator import EvalData

    r = _data()[0].numpy()
    truth = (np.random.default_rng(5).random((U, I)) < 0.3) & (r == 0)
    users = np.flatnonzero(truth.any(1) & (r.sum(1) > 0)).astype(np.int64)
    return EvalData(sp.csr_matrix(r), sp.csr_matrix(truth.astype(np.float32)), users)


def _plain(model: LD4MRec, opts) -> dict:
    """The single-process checkpoint entries (train/state.py's form)."""
    return {"model": model.state_dict(), "optimizer": opts.dense.state_dict(), "zin_optimizer": opts.z_in.state_dict()}


def _state(model: LD4MRec, opts) -> dict[str, np.ndarray]:
    """Parameters and both optimizers' moments (local shards on a sharded rank), as numpy."""
    from ld4mrec_dist.parallel.item import local_tensor

    out = {f"param/{n}": _np(local_tensor(p)) for n, p in model.named_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for opt in opts:
        for p, st in opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                out[f"{key}/{names[id(p)]}"] = _np(local_tensor(st[key]))
    return out


# ---------------------------------------------------------------- 2 ranks


def _rank(rank: int, world: int, ck1: str, ck2: str, plain1: str) -> dict:
    """Step 1 on a fresh item-parallel model (the full draw sliced), save; a fresh model
    loads the single-process checkpoint `ck1` and runs step 2; top-k of a fresh model."""
    from ld4mrec_dist.parallel.comm import CollectiveBytes
    from ld4mrec_dist.parallel.item import (
        SliceDraw,
        column_slice,
        draw_slice,
        item_mesh,
        item_parallel_step,
        item_param_groups,
        shard_items,
        slice_generators,
    )
    from ld4mrec_dist.parallel.topk import item_parallel_ranking, item_parallel_topk
    from ld4mrec_dist.scaling_model import item_parallel_bytes_per_step
    from ld4mrec_dist.train.engine import ItemParallel, item_parallel_mesh
    from ld4mrec_dist.train.loop import epoch_rows

    warnings.simplefilter("ignore")
    cfg = _cfg()
    mesh = item_mesh(1, world)

    def sharded() -> tuple[LD4MRec, object, object]:
        model = _model(cfg)
        layout = shard_items(model, mesh)
        return model, layout, build_optimizers(model, cfg, item_param_groups(model))

    def step(model, layout, opts, history, seed):
        t_B, target_BI, noise_BI = _full_draw(model, history.probabilities(cfg.diffusion), seed)
        lo, hi = layout.lo, layout.hi
        draw = SliceDraw(t_B, target_BI[:, lo:hi], noise_BI[:, lo:hi])
        with CollectiveBytes() as counted:
            loss = item_parallel_step(model, layout, opts, history, USERS, _rows(), (None, None), cfg, draw=draw)
        return float(loss), counted

    model, layout, opts = sharded()
    held = {n: tuple(b.shape) for n, b in model.named_buffers() if n.startswith("item_")}
    history = _history(model, cfg)
    loss1, counted = step(model, layout, opts, history, SEEDS[0])
    grads = {n: _np(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)
             for n, p in model.named_parameters()}
    state1 = _state(model, opts)
    save_sharded(ck2, model, opts)
    gathered = _flat(plain_state(model, opts))
    plain_model, _, plain_opts = sharded()
    load_plain_state(plain_model, plain_opts, torch.load(plain1, weights_only=True))
    plain_loaded = _state(plain_model, plain_opts)
    expected_bytes = (sum(item_parallel_bytes_per_step(B, D, grad_clip=True, condition_width=WIDTH).values())
                      + sync.zin_bytes_per_step(world, B, D)
                      + sync.sampler_bytes_per_step(layout.data_world, B))

    # Resume in this layout from the single-process checkpoint, then step 2.
    model2, layout2, opts2 = sharded()
    load_sharded(ck1, model2, opts2)
    loaded = _state(model2, opts2)
    loss2, _ = step(model2, layout2, opts2, history, SEEDS[1])

    # bf16 autocast runs through the sharded layers (a fresh model, one step).
    bf16_model, bf16_layout, bf16_opts = sharded()
    bf16_history = _history(bf16_model, cfg)
    t_B, target_BI, noise_BI = _full_draw(bf16_model, bf16_history.probabilities(cfg.diffusion), SEEDS[1])
    bf16_draw = SliceDraw(t_B, target_BI[:, layout.lo:layout.hi], noise_BI[:, layout.lo:layout.hi])
    bf16_loss = float(item_parallel_step(bf16_model, bf16_layout, bf16_opts, bf16_history, USERS, _rows(),
                                         (None, None), cfg, autocast=True, draw=bf16_draw))

    # The production draw: t shared by the item group, ε and the mask of the slice only.
    gens = slice_generators(cfg.train.seed, 3, layout, torch.device("cpu"))
    x_BL = column_slice(_rows(), layout.lo, layout.hi)
    own = draw_slice(model, x_BL, history.probabilities(cfg.diffusion), *gens)
    draws = {"t": _np(own.t), "noise": _np(own.noise), "changed": _np(own.target != x_BL)}

    # Top-k of a fresh model: k = 3, k = 8 (more than a slice holds) and k = I (every masked
    # item, all −inf, ranked by index).
    fresh, fresh_layout, _ = sharded()
    try:  # the whole-catalogue entry points refuse a sharded C-Net loudly
        fresh.score(_rows(), USERS)
        refused = ""
    except ValueError as err:
        refused = str(err)
    tops = {k: tuple(_np(x) for x in item_parallel_topk(fresh, fresh_layout, _rows(), USERS, k, mask_BI=_rows()))
            for k in (3, 8, I)}

    # The evaluator with the item-parallel RankFn (both ranks evaluate the same users).
    fresh.eval()
    metrics = evaluate_ranking(item_parallel_ranking(fresh, fresh_layout), _eval_data(), [2, 5], 3,
                               torch.device("cpu"))

    # A ("data", "item") = (2, 1) mesh against the trainer's own DDP step: each data rank its
    # own users and forward process.
    users, seed = DATA_USERS[rank], SEEDS[0] + 10 * rank
    data_model = _model(cfg)
    data_layout = shard_items(data_model, item_mesh(world, 1))
    data_opts = build_optimizers(data_model, cfg, item_param_groups(data_model))
    data_history = _history(data_model, cfg)
    draw = SliceDraw(*_full_draw(data_model, data_history.probabilities(cfg.diffusion), seed, users))
    data_loss = item_parallel_step(data_model, data_layout, data_opts, data_history, users, _rows(users),
                                   (None, None), cfg, draw=draw)
    ddp_model = _model(cfg)
    ddp_opts, ddp_history = build_optimizers(ddp_model, cfg), _history(ddp_model, cfg)
    ddp_loss = train_step(ddp_model, wrap_cnet(ddp_model, torch.device("cpu")), ddp_opts, ddp_history, users,
                          _rows(users), torch.Generator().manual_seed(seed), cfg)
    data = {"loss": float(data_loss), "state": _state(data_model, data_opts), "history": _np(data_history.table_TH),
            "ddp_loss": float(ddp_loss), "ddp_state": _state(ddp_model, ddp_opts),
            "ddp_history": _np(ddp_history.table_TH)}
    # The trainer's engine and batch order: the item group's ranks step through the same users.
    worker = SimpleNamespace(world=world, rank=rank, device=torch.device("cpu"))
    engine_model = _model(cfg)
    engine = ItemParallel(engine_model, shard_items(engine_model, item_parallel_mesh(cfg, worker)), cfg, worker.device)
    trainer_run = SimpleNamespace(cfg=cfg, engine=engine, store=range(U))
    epoch_orders = [epoch_rows(trainer_run, epoch).tolist() for epoch in range(3)]

    return {
        "lo": layout.lo, "hi": layout.hi, "loss1": loss1, "loss2": loss2, "grads": grads, "state1": state1,
        "loaded": loaded, "state2": _state(model2, opts2), "history": _np(history.table_TH),
        "gathered": gathered, "plain_loaded": plain_loaded, "draws": draws, "bf16_loss": bf16_loss,
        "tops": tops, "metrics": metrics, "data": data, "refused": refused,
        "bytes": counted.total, "expected_bytes": expected_bytes, "calls": counted.calls,
        "held": held, "built": _built_report(cfg, mesh), "epoch_orders": epoch_orders,
    }


def _reference_step(model: LD4MRec, opts, history: SamplerHistory, cfg: Config, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    return float(train_step(model, model.cnet, opts, history, USERS, _rows(), g, cfg))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference (two steps, a checkpoint after the first) and the 2-rank run."""
    tmp: Path = tmp_path_factory.mktemp("item_parallel")
    warnings.simplefilter("ignore")
    cfg = _cfg()
    model = _model(cfg)
    opts = build_optimizers(model, cfg)
    history = _history(model, cfg)
    loss1 = _reference_step(model, opts, history, cfg, SEEDS[0])
    ref = {"loss1": loss1, "grads": {n: _np(p.grad) for n, p in model.named_parameters()},
           "state1": _state(model, opts)}
    save_sharded(tmp / "ck1", model, opts)
    torch.save(_plain(model, opts), tmp / "plain1.pt")
    ref["plain1"] = _flat(_plain(model, opts))
    ref["conditions"], ref["norm_conditions"] = _conditions(_model(cfg)), _conditions(_model(NORMS))
    ref["loss2"] = _reference_step(model, opts, history, cfg, SEEDS[1])
    ref["state2"], ref["history"] = _state(model, opts), _np(history.table_TH)
    fresh_model = _model(cfg)  # the float32 loss of the bf16 smoke test's model and draw
    ref["fresh_loss"] = _reference_step(fresh_model, build_optimizers(fresh_model, cfg),
                                        _history(fresh_model, cfg), cfg, SEEDS[1])
    ranks = gloo_spawn(_rank, WORLD, (str(tmp / "ck1"), str(tmp / "ck2"), str(tmp / "plain1.pt")), free_port())
    # The 2-rank checkpoint, loaded by one process.
    model1 = _model(cfg)
    opts1 = build_optimizers(model1, cfg)
    load_sharded(tmp / "ck2", model1, opts1)
    fresh = _model(cfg)
    scores = mask_items(fresh.score(_rows(), USERS), _rows().to_dense())
    fresh.eval()
    metrics = evaluate(fresh.score, _eval_data(), [2, 5], 3, torch.device("cpu"))
    return {"metrics": metrics, "ref": ref, "ranks": ranks, "loaded1": _state(model1, opts1), "scores": scores}


def _slice(name: str, full: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The part of a full tensor that the rank owning items [lo, hi) holds."""
    if name.endswith("fc_in.weight"):
        return full[:, lo:hi]
    if ".fc_out." in name or name.startswith("fc_out."):
        return full[lo:hi]
    return full


def _assert_state_matches(sharded: dict, full: dict, lo: int, hi: int) -> None:
    assert sharded.keys() == full.keys()
    for name, value in full.items():
        np.testing.assert_allclose(sharded[name], _slice(name, value, lo, hi), **TOL, err_msg=name)


def test_layout_splits_items_like_torch_chunk(runs):
    assert [(r["lo"], r["hi"]) for r in runs["ranks"]] == [(0, 6), (6, 11)]


def test_whole_catalogue_calls_are_refused(runs):
    for r in runs["ranks"]:
        assert "takes its slice of x" in r["refused"]


def test_slices_draw_their_own_noise_and_share_t(runs):
    d0, d1 = (r["draws"] for r in runs["ranks"])
    assert np.array_equal(d0["t"], d1["t"])
    assert d0["noise"].shape == (B, 6) and d1["noise"].shape == (B, 5)
    assert not np.allclose(d0["noise"][:, :5], d1["noise"])
    assert d0["changed"].any() or d1["changed"].any()  # sr_prob = 0.3 smooths some entries


def test_loss_and_gradients_equal_single_process(runs):
    ref = runs["ref"]
    for r in runs["ranks"]:
        assert r["loss1"] == pytest.approx(ref["loss1"], rel=1e-5, abs=1e-7)
        assert r["grads"].keys() == ref["grads"].keys()
        for name, g in ref["grads"].items():
            np.testing.assert_allclose(r["grads"][name], _slice(name, g, r["lo"], r["hi"]), **TOL, err_msg=name)
        # clipped and updated, Adam moments included (and z_in's SparseAdam)
        _assert_state_matches(r["state1"], ref["state1"], r["lo"], r["hi"])
        np.testing.assert_allclose(r["history"], ref["history"], **TOL)
    # the replicated layers got bitwise-equal updates on both ranks
    s0, s1 = runs["ranks"][0]["state2"], runs["ranks"][1]["state2"]
    for name in s0:
        if "fc_in" not in name and "fc_out" not in name:
            assert np.array_equal(s0[name], s1[name]), name


def test_data_dimension_equals_ddp(runs):
    """On a (2, 1) mesh the item-parallel step is data parallel: the same update as DDP."""
    for r in runs["ranks"]:
        d = r["data"]
        assert d["loss"] == pytest.approx(d["ddp_loss"], rel=1e-5, abs=1e-7)
        _assert_state_matches(d["state"], d["ddp_state"], 0, I)
        np.testing.assert_allclose(d["history"], d["ddp_history"], **TOL)
    assert runs["ranks"][0]["data"]["loss"] != runs["ranks"][1]["data"]["loss"]  # different batches


def test_bf16_autocast_runs_sharded(runs):
    """Smoke: the bf16 step gives the float32 loss of the same draw to bf16 precision."""
    fp32 = runs["ref"]["fresh_loss"]
    for r in runs["ranks"]:
        assert r["bf16_loss"] == pytest.approx(fp32, rel=2e-2) and r["bf16_loss"] != fp32


def test_checkpoints_load_across_layouts(runs):
    ref = runs["ref"]
    # 1 rank -> 2 ranks: each rank loads its shards of the single-process state, and the next
    # step (same draw) gives the single-process loss and state.
    for r in runs["ranks"]:
        _assert_state_matches(r["loaded"], ref["state1"], r["lo"], r["hi"])
        assert r["loss2"] == pytest.approx(ref["loss2"], rel=1e-5, abs=1e-7)
        _assert_state_matches(r["state2"], ref["state2"], r["lo"], r["hi"])
    # 2 ranks -> 1 rank: the whole state, both shards joined.
    _assert_state_matches(runs["loaded1"], ref["state1"], 0, I)


def test_single_process_format_gathers_and_reshards(runs):
    """plain_state gives rank 0 the very dictionaries a single-process run checkpoints;
    load_plain_state puts such a checkpoint into the shards."""
    want = runs["ref"]["plain1"]
    got = runs["ranks"][0]["gathered"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(got[key], value, **TOL, err_msg=key)
        else:
            assert got[key] == value, key
    assert not any(k.startswith("model/") for k in runs["ranks"][1]["gathered"])  # rank 0 only
    for r in runs["ranks"]:
        _assert_state_matches(r["plain_loaded"], runs["ref"]["state1"], r["lo"], r["hi"])


def test_merged_topk_equals_single_process(runs):
    for k in (3, 8, I):
        want_val, want_item = topk_ordered(runs["scores"], k)
        for r in runs["ranks"]:
            val, item = r["tops"][k]
            assert np.array_equal(item, want_item.numpy()), k
            np.testing.assert_allclose(val, want_val.numpy(), **TOL)


def test_evaluator_metrics_through_the_item_parallel_ranking(runs):
    """eval.evaluate with the item-parallel RankFn (2 ranks, the same users on both) gives
    the single-process metrics."""
    want = runs["metrics"]
    assert want["recall@5"] > 0
    for r in runs["ranks"]:
        assert r["metrics"].keys() == want.keys()
        for name, value in want.items():
            assert r["metrics"][name] == pytest.approx(value, abs=1e-9), name


def test_trainer_batches_the_same_users_on_every_item_rank(runs):
    """The loop's epoch order on the trainer's `ItemParallel` engine: the ranks of an item
    group hold the same users and sum the conditions and FC_in over one batch, so they must
    shuffle alike (seeded by the world rank, each rank formed its own batches)."""
    first, second = (r["epoch_orders"] for r in runs["ranks"])
    assert first == second
    assert all(sorted(order) == list(range(U)) for order in first)
    assert len({tuple(order) for order in first}) > 1  # a fresh permutation each epoch


def test_item_group_moves_activations_not_gradients(runs):
    for r in runs["ranks"]:
        assert r["bytes"] == r["expected_bytes"], r["calls"]
        fc_bytes = 4 * (2 * I * D + I)
        # FC_in/FC_out's gradients never cross ranks: 2 all-reduces of B·D floats do.
        assert [n for n, c in r["calls"] if c == 4 * B * D].count("_c10d_functional.all_reduce.default") == 2
        assert all(c < fc_bytes / 2 for _, c in r["calls"])


def _assert_built_sharded(ranks: list[dict], ref: dict) -> None:
    """Each rank holds its slice only (item layers, their Adam moments, V_k, features,
    degrees), the replicated parameters are bitwise equal across ranks, the shards joined
    are the block-seeded Xavier draw of the whole layers, and the conditions summed over
    the slices are the single-process ones."""
    from ld4mrec_dist.parallel.build import FC_IN, FC_OUT, xavier_rows

    for r in ranks:
        lo, hi, built = r["lo"], r["hi"], r["built"]
        width = hi - lo
        assert built["buffers"] == {"item_factors": (width, K), "item_degree": (width,),
                                    "item_feature_0": (width, 5), "item_feature_1": (width, 4)}
        assert {n: m for n, m in built["moments"].items() if n.startswith("cnet.fc_")} == {
            "cnet.fc_in.weight": (D, width), "cnet.fc_in.bias": (D,), "cnet.fc_out.weight": (width, D),
            "cnet.fc_out.bias": (width,)}
        for key in ("conditions", "norm_conditions"):
            for name, want in ref[key].items():
                np.testing.assert_allclose(built[key][name], want, **TOL, err_msg=f"{key}/{name}")
        for name, value in built["replicated"].items():
            assert np.array_equal(value, ranks[0]["built"]["replicated"][name]), name
    joined = {n: np.concatenate([r["built"]["shards"][n] for r in ranks], axis=1 if n.endswith("fc_in.weight") else 0)
              for n in ranks[0]["built"]["shards"] if not n.endswith("fc_in.bias")}
    np.testing.assert_array_equal(joined["cnet.fc_in.weight"], xavier_rows(I, D, 0, I, SEED, FC_IN).T.numpy())
    np.testing.assert_array_equal(joined["cnet.fc_out.weight"], xavier_rows(I, D, 0, I, SEED, FC_OUT).numpy())
    assert not joined["cnet.fc_out.bias"].any()


SEED = _cfg().train.seed


def test_built_sharded_holds_its_slice_and_sums_conditions(runs):
    _assert_built_sharded(runs["ranks"], runs["ref"])
    for r in runs["ranks"]:  # shard_items on a model built whole frees the other rows too
        assert r["held"]["item_feature_0"] == (r["hi"] - r["lo"], 5)


def test_item_layer_init_follows_the_full_layers_xavier_law():
    """N(0, 2 / (I + D)) of the whole layer, whatever the slice: 2.6 M draws, so the
    sample std is within 0.3 % and the mean within 0.003 std (both ≈ 5 standard errors)."""
    from ld4mrec_dist.parallel.build import INIT_BLOCK, xavier_rows

    n, d = 5 * INIT_BLOCK // 2 * 5, 16  # 409,600 items: 7 blocks, the last partial
    full = xavier_rows(n, d, 0, n, 3, 1)
    std = (2.0 / (n + d)) ** 0.5
    assert abs(full.mean().item()) < 3e-3 * std
    assert full.std().item() == pytest.approx(std, rel=3e-3)
    lo, hi = INIT_BLOCK - 7, 3 * INIT_BLOCK + 11  # a slice crossing block boundaries
    assert torch.equal(xavier_rows(n, d, lo, hi, 3, 1), full[lo:hi])
    assert not torch.equal(xavier_rows(n, d, 0, 10, 3, 2), full[:10])  # FC_in and FC_out draw apart


# ---------------------------------------------------------------- top-k, one process


def _brute_topk(scores: torch.Tensor, k: int) -> list[list[int]]:
    return [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in scores.tolist()]


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 5, 12, 23, 30])
def test_merge_topk_over_slices_with_ties(parts, k):
    g = torch.Generator().manual_seed(parts * 100 + k)
    scores = torch.randint(0, 3, (6, 23), generator=g).float()  # many ties
    scores[0] = 1.0  # a row that is all one tie
    scores[1, ::2] = float("-inf")  # masked items
    from ld4mrec_dist.parallel.item import item_slice

    vals, items = [], []
    for p in range(parts):
        lo, hi = item_slice(23, parts, p)
        v, i = topk_ordered(scores[:, lo:hi], k, offset=lo)
        vals.append(v)
        items.append(i)
    merged_val, merged_item = merge_topk(torch.cat(vals, 1), torch.cat(items, 1), k)
    want_val, want_item = topk_ordered(scores, k)
    assert merged_item.tolist() == want_item.tolist() == _brute_topk(scores, k)
    assert torch.equal(merged_val, want_val)
    assert torch.equal(want_val, torch.topk(scores, min(k, 23), dim=1).values)


def test_topk_ordered_would_catch_an_unordered_tie_break():
    """A tie at the cut-off goes to the smallest index even when torch.topk picks another."""
    scores = torch.tensor([[0.0, 5.0, 1.0, 5.0, 5.0, 2.0]])
    assert topk_ordered(scores, 2)[1].tolist() == [[1, 3]]
    assert topk_ordered(scores, 4, offset=10)[1].tolist() == [[11, 13, 14, 15]]


# ---------------------------------------------------------------- 4 ranks: (1, 4) and (2, 2) meshes

WORLD4 = 4


def _rank4(rank: int, world: int) -> dict:
    """On 4 processes: one step and top-k on a (1, 4) mesh (slices of 3, 3, 3, 2 items) with
    the single-process draw sliced; one step on a (2, 2) mesh against plain DDP on the same 4
    processes, the item group's two ranks holding the same users (DDP's mean over 4 ranks of
    two copies of each data rank's gradient is the mean over the 2 data ranks)."""
    from ld4mrec_dist.parallel.comm import CollectiveBytes
    from ld4mrec_dist.parallel.item import (
        SliceDraw,
        column_slice,
        item_mesh,
        item_parallel_step,
        item_param_groups,
        score_slice,
        shard_items,
    )
    from ld4mrec_dist.parallel.topk import item_parallel_topk
    from ld4mrec_dist.scaling_model import item_parallel_bytes_per_step

    warnings.simplefilter("ignore")
    cfg = _cfg()

    def sharded(data: int, item: int, cfg: Config = cfg):
        model = _model(cfg)
        layout = shard_items(model, item_mesh(data, item))
        return model, layout, build_optimizers(model, cfg, item_param_groups(model))

    def step(model, layout, opts, history, seed, users, cfg: Config = cfg):
        full = _full_draw(model, history.probabilities(cfg.diffusion), seed, users)
        draw = SliceDraw(full[0], full[1][:, layout.lo:layout.hi], full[2][:, layout.lo:layout.hi])
        return float(item_parallel_step(model, layout, opts, history, users, _rows(users), (None, None), cfg,
                                        draw=draw))

    def grads(model):
        from ld4mrec_dist.parallel.item import local_tensor

        return {n: _np(local_tensor(p.grad)) for n, p in model.named_parameters()}

    model, layout, opts = sharded(1, world)
    history = _history(model, cfg)
    wide = {"lo": layout.lo, "hi": layout.hi, "loss": step(model, layout, opts, history, SEEDS[0], USERS),
            "grads": grads(model), "state": _state(model, opts), "history": _np(history.table_TH)}
    fresh, fresh_layout, _ = sharded(1, world)
    wide["tops"] = {k: tuple(_np(x) for x in item_parallel_topk(fresh, fresh_layout, _rows(), USERS, k,
                                                                   mask_BI=_rows()))
                    for k in (1, 3, 8, I)}

    # model.input_norm=l2 on the (1, 4) mesh: x_t's rows divided by their norm over all slices
    l2 = _cfg("l2")
    model, layout, opts = sharded(1, world, l2)
    history = _history(model, l2)
    with CollectiveBytes() as counted:
        wide["l2_loss"] = step(model, layout, opts, history, SEEDS[0], USERS, l2)
    wide["l2_grads"], wide["l2_state"] = grads(model), _state(model, opts)
    wide["l2_bytes"] = counted.total
    wide["l2_expected_bytes"] = (sum(item_parallel_bytes_per_step(B, D, grad_clip=True, l2_input=True,
                                                                  condition_width=WIDTH).values())
                                 + sync.zin_bytes_per_step(world, B, D)
                                 + sync.sampler_bytes_per_step(layout.data_world, B))
    fresh, fresh_layout, _ = sharded(1, world, l2)
    fresh.eval()
    wide["l2_scores"] = _np(score_slice(fresh, _rows(), column_slice(_rows(), fresh_layout.lo, fresh_layout.hi),
                                        USERS))

    model, layout, opts = sharded(2, 2)
    history = _history(model, cfg)
    users, seed = DATA_USERS[layout.data_rank], SEEDS[0] + 10 * layout.data_rank
    mesh = {"coords": (layout.data_rank, layout.item_rank), "lo": layout.lo, "hi": layout.hi,
            "loss": step(model, layout, opts, history, seed, users), "grads": grads(model),
            "state": _state(model, opts), "history": _np(history.table_TH)}
    ddp_model = _model(cfg)
    ddp_opts, ddp_history = build_optimizers(ddp_model, cfg), _history(ddp_model, cfg)
    mesh["ddp_loss"] = float(train_step(ddp_model, wrap_cnet(ddp_model, torch.device("cpu")), ddp_opts, ddp_history,
                                        users, _rows(users), torch.Generator().manual_seed(seed), cfg))
    mesh["ddp_state"] = _state(ddp_model, ddp_opts)
    wide["built"] = _built_report(cfg, item_mesh(1, world))
    return {"wide": wide, "mesh": mesh, "svd": _svd_layouts(rank, layout)}


# The distributed SVD's matrices: U_SVD users × I_SVD items, V_k of rank K_SVD.
U_SVD, I_SVD, K_SVD, SVD_SEED = 23, 17, 4, 5
SPECTRUM = (10.0, 8.0, 6.0, 4.0, 3.0, 2.0)  # rank 6 = K + 2: the sketch spans the range exactly


def _low_rank() -> np.ndarray:
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(U_SVD, len(SPECTRUM))))
    v, _ = np.linalg.qr(rng.normal(size=(I_SVD, len(SPECTRUM))))
    return u @ np.diag(SPECTRUM) @ v.T


def _clicks():
    """A full-rank 0/1 matrix: the sketch only approximates; the layouts must agree to rounding."""
    import scipy.sparse as sp

    return sp.csr_matrix((np.random.default_rng(1).random((U_SVD, I_SVD)) < 0.3).astype(np.float64))


def _svd_layouts(rank: int, mesh_layout) -> dict:
    """This rank's V_k rows of both matrices with the rows split over 3 and 2 data ranks
    (sub-groups of the 4 processes), the columns over 3 and 2 item ranks, and on the
    (2, 2) mesh (rows over its data group, columns over its item group); None outside a
    sub-group."""
    import scipy.sparse as sp
    import torch.distributed as tdist

    from ld4mrec_dist.parallel.item import item_slice
    from ld4mrec_dist.partition import user_range
    from ld4mrec_dist.svd_dist import distributed_item_factors

    groups = {3: tdist.new_group([0, 1, 2]), 2: tdist.new_group([0, 1])}  # every rank creates each
    out: dict = {}
    for name, a in (("low_rank", sp.csr_matrix(_low_rank())), ("clicks", _clicks())):
        users = user_range(U_SVD, mesh_layout.data_rank, 2)
        lo, hi = item_slice(I_SVD, 2, mesh_layout.item_rank)
        out[(name, "mesh")] = (mesh_layout.data_rank, lo, hi, distributed_item_factors(
            a[users.start:users.stop], K_SVD, SVD_SEED, item_range=(lo, hi), data_group=mesh_layout.data_group,
            item_group=mesh_layout.item_group))
        for parts, group in groups.items():
            if rank >= parts:
                out[(name, "data", parts)] = out[(name, "item", parts)] = None
                continue
            users = user_range(U_SVD, rank, parts)
            out[(name, "data", parts)] = distributed_item_factors(a[users.start:users.stop], K_SVD, SVD_SEED,
                                                                  data_group=group)
            lo, hi = item_slice(I_SVD, parts, rank)
            out[(name, "item", parts)] = (lo, hi, distributed_item_factors(a, K_SVD, SVD_SEED, item_range=(lo, hi),
                                                                           item_group=group))
    return out


@pytest.fixture(scope="module")
def runs4(runs):
    """The 4-process run; the single-process reference is `runs`', plus one step and the
    scores of an input_norm=l2 model."""
    warnings.simplefilter("ignore")
    l2 = _cfg("l2")
    model = _model(l2)
    opts = build_optimizers(model, l2)
    loss = _reference_step(model, opts, _history(model, l2), l2, SEEDS[0])
    fresh = _model(l2)
    fresh.eval()
    ref_l2 = {"loss": loss, "grads": {n: _np(p.grad) for n, p in model.named_parameters()},
              "state": _state(model, opts), "scores": _np(fresh.score(_rows(), USERS))}
    return {"ref": runs["ref"], "scores": runs["scores"], "l2": ref_l2,
            "ranks": gloo_spawn(_rank4, WORLD4, (), free_port())}


def _assert_step_matches(got: tuple, want: tuple, lo: int, hi: int) -> None:
    """(loss, gradients, state after the step) of a rank owning items [lo, hi) against the full ones."""
    assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-7)
    for name, g in want[1].items():
        np.testing.assert_allclose(got[1][name], _slice(name, g, lo, hi), **TOL, err_msg=name)
    _assert_state_matches(got[2], want[2], lo, hi)


def test_four_item_ranks_equal_single_process(runs4):
    """W_item = 4: every rank's loss, gradient shards and updated state are the single-process ones."""
    ref = runs4["ref"]
    assert [(r["wide"]["lo"], r["wide"]["hi"]) for r in runs4["ranks"]] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    for r in runs4["ranks"]:
        w = r["wide"]
        _assert_step_matches((w["loss"], w["grads"], w["state"]), (ref["loss1"], ref["grads"], ref["state1"]),
                             w["lo"], w["hi"])


def test_four_item_ranks_merge_the_single_process_topk(runs4):
    for k in (1, 3, 8, I):  # k = 8 and I: more than any slice holds
        want_val, want_item = topk_ordered(runs4["scores"], k)
        for r in runs4["ranks"]:
            val, item = r["wide"]["tops"][k]
            assert np.array_equal(item, want_item.numpy()), k
            np.testing.assert_allclose(val, want_val.numpy(), **TOL)


def test_four_item_ranks_built_sharded(runs4):
    _assert_built_sharded([{**r["wide"]} for r in runs4["ranks"]], runs4["ref"])


def test_two_by_two_mesh_equals_ddp(runs4):
    """A (2, 2) mesh: world rank r is data rank r // 2, item rank r % 2; the update (clipped,
    Adam moments, z_in's SparseAdam) equals plain DDP's over the two data ranks' batches."""
    ranks = [r["mesh"] for r in runs4["ranks"]]
    assert [m["coords"] for m in ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(m["lo"], m["hi"]) for m in ranks] == [(0, 6), (6, 11)] * 2
    for m in ranks:
        assert m["loss"] == pytest.approx(m["ddp_loss"], rel=1e-5, abs=1e-7)
        for name in ("fc_in.weight", "fc_out.weight"):  # the step moved the sharded layers
            key = next(k for k in m["grads"] if k.endswith(name))
            assert np.abs(m["grads"][key]).max() > 0, key
        _assert_state_matches(m["state"], m["ddp_state"], m["lo"], m["hi"])
    assert ranks[0]["loss"] == ranks[1]["loss"] != ranks[2]["loss"] == ranks[3]["loss"]
    for m in ranks[1:]:  # the sampler history is replicated: every rank recorded both data ranks' users once
        assert np.array_equal(m["history"], ranks[0]["history"])


def test_l2_input_norm_spans_the_item_slices(runs4):
    """model.input_norm=l2 on 4 item ranks: the row norm of x_t is all-reduced over the
    slices (B floats more per step), so the step and the scores are the single-process ones."""
    ref = runs4["l2"]
    assert ref["loss"] != pytest.approx(runs4["ref"]["loss1"], rel=1e-3)  # the norm does change the model
    for r in runs4["ranks"]:
        w = r["wide"]
        _assert_step_matches((w["l2_loss"], w["l2_grads"], w["l2_state"]), (ref["loss"], ref["grads"], ref["state"]),
                             w["lo"], w["hi"])
        np.testing.assert_allclose(w["l2_scores"], ref["scores"][:, w["lo"]:w["hi"]], **TOL)
        assert w["l2_bytes"] == w["l2_expected_bytes"]


def _svd_joined(ranks: list[dict], name: str, split: str, parts: int) -> np.ndarray:
    """V_k [I, K] of one layout: a data rank's (all equal), or the item slices joined."""
    got = [r["svd"][(name, split, parts)] for r in ranks]
    assert all(g is None for g in got[parts:])
    if split == "data":  # every data rank holds all of V_k
        for v in got[1:parts]:
            np.testing.assert_allclose(v, got[0], atol=1e-6)
        return got[0]
    want = [(0, 6), (6, 12), (12, 17)] if parts == 3 else [(0, 9), (9, 17)]
    assert [g[:2] for g in got[:parts]] == want
    return np.concatenate([g[2] for g in got[:parts]])


def _svd_mesh(ranks: list[dict], name: str) -> np.ndarray:
    """V_k of the (2, 2) mesh: both data ranks hold the same slices; the item slices joined."""
    got = [r["svd"][(name, "mesh")] for r in ranks]
    assert [g[:3] for g in got] == [(0, 0, 9), (0, 9, 17), (1, 0, 9), (1, 9, 17)]
    for a, b in ((0, 2), (1, 3)):
        np.testing.assert_allclose(got[a][3], got[b][3], atol=1e-6)
    return np.concatenate([got[0][3], got[1][3]])


def _dense_v(a: np.ndarray, k: int) -> np.ndarray:
    """numpy.linalg.svd's top-k right singular vectors, signs fixed as svd_dist fixes them."""
    v = np.linalg.svd(a)[2][:k].T
    return v * np.sign(v[np.abs(v).argmax(0), np.arange(k)])


@pytest.mark.parametrize("parts", [3, 2])
@pytest.mark.parametrize("split", ["data", "item"])
def test_distributed_svd_equals_dense_svd(runs4, split, parts):
    """An exactly rank-(k + 2) matrix: the range finder is exact, V_k is numpy's to float32."""
    np.testing.assert_allclose(_svd_joined(runs4["ranks"], "low_rank", split, parts),
                               _dense_v(_low_rank(), K_SVD), atol=1e-5)


def test_distributed_svd_on_a_data_by_item_mesh(runs4):
    np.testing.assert_allclose(_svd_mesh(runs4["ranks"], "low_rank"), _dense_v(_low_rank(), K_SVD), atol=1e-5)
    from ld4mrec_dist.svd_dist import distributed_item_factors

    one = distributed_item_factors(_clicks(), K_SVD, SVD_SEED)
    np.testing.assert_allclose(_svd_mesh(runs4["ranks"], "clicks"), one, atol=1e-5)


@pytest.mark.parametrize("parts", [3, 2])
@pytest.mark.parametrize("split", ["data", "item"])
def test_distributed_svd_layouts_equal_one_process(runs4, split, parts):
    """A full-rank matrix: every layout gives the one-process V_k (the same block-seeded
    sketch), which captures nearly the energy of the exact top-k subspace."""
    from ld4mrec_dist.svd_dist import distributed_item_factors

    one = distributed_item_factors(_clicks(), K_SVD, SVD_SEED)
    np.testing.assert_allclose(_svd_joined(runs4["ranks"], "clicks", split, parts), one, atol=1e-5)
    a = _clicks().toarray()
    exact = np.sum(np.linalg.svd(a, compute_uv=False)[:K_SVD] ** 2)
    assert 0.98 * exact < np.linalg.norm(a @ one) ** 2 <= exact * (1 + 1e-6)
