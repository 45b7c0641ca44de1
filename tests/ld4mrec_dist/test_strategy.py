"""Gradient strategies (ld4mrec_dist/strategy.py) and the scaling model
(ld4mrec_dist/scaling_model.py): byte formulas against closed forms, the
torch DDP hooks on 2 real gloo processes (benchmarks.harness.gloo_spawn), PowerSGD's state
through a checkpoint and resume (bitwise continuation) on the same processes, `auto` on
hand-computed cases, and the config's errors."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.harness import free_port, gloo_spawn
from ld4mrec_dist import scaling_model as sm
from ld4mrec_dist import strategy as st
from ld4mrec_dist.config import ConfigError, load_config

I, D, K, DIMS = 4_000, 64, 4, (6,)  # 2 DDP buckets: C-Net's reversed parameters pass 1 MiB
WORLD, B = 2, 5


def closed_form_params(i: int, d: int, k: int, dims: tuple[int, ...]) -> int:
    """C-Net's parameter count written out: FC_in, BD (W1 2D×D, W2 K×D, W3 D×D), BG (per
    modality two heads D_m×D → D×D), FC_out."""
    fc = (i * d + d) + (d * i + i)
    bd = (2 * d * d + d) + (k * d + d) + (d * d + d)
    bg = sum(2 * ((dm * d + d) + (d * d + d)) for dm in dims)
    return fc + bd + bg


def test_gradient_bytes_follow_closed_forms():
    shape = sm.Shape("t", I, D, B, K, DIMS)
    params = closed_form_params(I, D, K, DIMS)
    assert sum(math.prod(s) for s in sm.grad_shapes(I, D, K, DIMS)) == params
    by = {s: sm.bytes_per_step(s, shape, WORLD) for s in sm.MODELLED}
    assert by["ddp"]["C-Net gradients (fp32)"] == 4 * params
    assert by["ddp_bf16"]["C-Net gradients (bf16)"] == 2 * params
    # PowerSGD, r = 4: FC_in [D, I] and FC_out [I, D] give (I + D)·r each; W1 [D, 2D] (D + 2D)·r,
    # W3 and the D×D heads (2D)·r, W2 [D, K] and the [D, 6] heads stay whole (K·D < 2·(D+K)·r·… fails);
    # every bias stays whole.
    r = st.POWERSGD_RANK
    pq = 2 * (I + D) * r + (D + 2 * D) * r + (2 * D) * r + 2 * (2 * D) * r
    plain = (D + I) + 3 * D + 4 * D + (K * D) + 2 * (DIMS[0] * D)
    assert sm.powersgd_elements(sm.grad_shapes(I, D, K, DIMS), r) == (pq, plain)
    assert by["powersgd"][f"C-Net gradients (PowerSGD P, Q, rank {r})"] == 4 * pq
    assert by["powersgd"]["C-Net gradients (uncompressed tensors)"] == 4 * plain
    for s in ("ddp", "ddp_bf16", "powersgd"):
        assert by[s]["z_in rows"] == WORLD * B * (8 + 4 * D)
        assert by[s]["sampler history"] == WORLD * B * 16
    # item_parallel (one item group): two [B, D] float32 all-reduces and the loss instead of
    # any gradient, as item_parallel_bytes_per_step says (parallel/'s tests count them)
    item = by["item_parallel"]
    theirs = sm.item_parallel_bytes_per_step(B, D)
    assert item["FC_in output + FC_out input gradient [B, D]"] == 2 * B * D * 4 == theirs["activations"]
    assert item["per-user loss over item slices"] == (B + 1) * 4 == theirs["loss"]
    width = K + sum(DIMS)  # c_u and every e_{u,m}, summed over the item slices
    assert item["conditions over item slices [B, K + ΣD_m]"] == B * width * 4 \
        == sm.item_parallel_bytes_per_step(B, D, condition_width=width)["conditions"]
    assert not any("gradients" in k for k in item)
    two_groups = sm.bytes_per_step("item_parallel", shape, 4, item_group=2)
    assert two_groups["C-Net gradients over data replicas"] == 4 * (params - (2 * I * D + I) + (2 * I * D + I) / 2)


def test_ring_times_and_buckets_follow_closed_forms():
    net = sm.Network("n", gbps=8.0, latency_us=10.0)  # 1e9 bytes/s
    ar = sm.Collective("x", "all_reduce", 1e6, 3)
    ag = sm.Collective("y", "all_gather", 1e6, 1)
    assert sm.collective_time(ar, 4, net) == pytest.approx(2 * 3 / 4 * 1e-3 + 2 * 3 * 3 * 10e-6)
    assert sm.collective_time(ag, 4, net) == pytest.approx(3 / 4 * 1e-3 + 3 * 10e-6)
    assert sm.collective_time(ar, 1, net) == 0.0
    mib = 1 << 20
    assert sm.bucket_count([(mib // 4,)]) == 1  # exactly the first bucket's cap
    assert sm.bucket_count([(10,), (mib // 4,)]) == 2  # reversed: the 1 MiB tensor closes the first bucket
    assert sm.bucket_count([(30 * mib // 4,), (10,), (mib // 4,)]) == 2
    assert sm.bucket_count(sm.grad_shapes(I, D, K, DIMS)) == 2


def test_prediction_adds_compute_and_communication():
    shape = sm.Shape("t", I, D, B, K, DIMS)
    net, comp = sm.Network("n", 8.0, 0.0), sm.Compute("c", 1e-12, 1e-12)
    p1 = sm.predict("ddp", shape, 1, net, comp)
    assert p1.comm_s == 0 and p1.efficiency == pytest.approx(1.0)
    p4 = sm.predict("ddp", shape, 4, net, comp)
    comm = sum(sm.collective_time(c, 4, net) for c in sm.collectives("ddp", shape, 4))
    assert p4.step_s == pytest.approx(p1.compute_s + comm)
    assert p4.users_per_s == pytest.approx(4 * B / p4.step_s)
    assert p4.efficiency == pytest.approx(p4.users_per_s / (4 * p1.users_per_s))


# ---------------------------------------------------------------- auto

FREE = sm.Compute("free", 0.0, 0.0, 1e-12)  # compute costs (almost) nothing: step time = communication
NO_LATENCY = sm.Network("fast", 8.0, 0.0)
DATA_PARALLEL = ("ddp", "ddp_bf16", "powersgd")


def test_auto_on_one_rank_is_ddp():
    assert sm.choose_strategy(1, sm.SHAPES["electronics"], NO_LATENCY, FREE)[0] == "ddp"


def test_auto_keeps_exact_ddp_when_communication_is_free():
    infinite = sm.Network("inf", 1e12, 0.0)
    slow = sm.Compute("slow", 1e-9, 1e-9)  # PowerSGD's extra matmuls then cost more than it saves
    name, reason = sm.choose_strategy(4, sm.SHAPES["baby"], infinite, slow, available=DATA_PARALLEL)
    assert name == "ddp" and "ms/step" in reason
    # item_parallel is as exact, but plain DDP wins while it is within the tolerance of the best
    both = (*DATA_PARALLEL, "item_parallel")
    assert sm.choose_strategy(4, sm.SHAPES["baby"], infinite, slow, available=both, item_group=2)[0] == "ddp"


def test_auto_prefers_bf16_when_powersgd_cannot_compress():
    # d = 2: no [2, m] matrix compresses 2× at rank min(2, m, 4), so PowerSGD all-reduces
    # everything in float32 (= ddp's bytes) and bf16 halves them: bf16 is 2× faster than both.
    shape = sm.Shape("thin", 50_000, hidden=2, batch=1, svd_rank=2, feature_dims=(2,))
    assert sm.powersgd_elements(sm.grad_shapes(50_000, 2, 2, (2,)))[0] == 0
    name, _ = sm.choose_strategy(2, shape, NO_LATENCY, FREE, available=DATA_PARALLEL)
    assert name == "ddp_bf16"


def test_auto_picks_powersgd_when_gradients_dominate_and_item_parallel_only_when_wired():
    shape = sm.Shape("wide", 200_000, hidden=256, batch=8, svd_rank=8, feature_dims=(8,))
    preds = {s: sm.predict(s, shape, 4, NO_LATENCY, FREE, item_group=2) for s in sm.MODELLED}
    # hand check: ddp moves 4·(2·I·D + I), PowerSGD 4·(2·(I + D)·r + I) (FC_out's bias stays
    # whole): ≈ (2D + 1) / (2r + 1) = 57× less; the rest (z_in, sampler, small layers) < 1 %
    assert preds["ddp"].step_s / preds["powersgd"].step_s == pytest.approx(513 / 9, rel=0.02)
    # item groups of 2: half the users per step, but 2 all-reduces of [B, D] plus the data
    # replicas' all-reduce of half the item layers ≈ half of ddp's bytes: slower than PowerSGD
    assert preds["item_parallel"].users_per_s < preds["powersgd"].users_per_s
    assert sm.choose_strategy(4, shape, NO_LATENCY, FREE, available=DATA_PARALLEL)[0] == "powersgd"
    assert sm.best_item_group(shape, 4, NO_LATENCY, FREE) == 4  # one item group: no gradient at all
    wired = (*DATA_PARALLEL, "item_parallel")
    assert sm.choose_strategy(4, shape, NO_LATENCY, FREE, available=wired)[0] == "item_parallel"


def test_auto_respects_a_memory_limit():
    shape = sm.SHAPES["electronics_x10"]
    name, reason = sm.choose_strategy(2, shape, NO_LATENCY, FREE, memory_limit=1 << 30)
    assert name == "ddp" and "fits" in reason


# ---------------------------------------------------------------- config and start-up


def test_config_rejects_an_unknown_strategy_naming_the_choices():
    with pytest.raises(ConfigError, match=r"scaling.strategy='ring'.*ddp_bf16.*powersgd.*auto"):
        load_config(None, ["scaling.strategy=ring"])


def test_a_strategy_the_trainer_cannot_run_is_refused_with_a_clear_error(monkeypatch):
    cfg = load_config(None, ["scaling.strategy=item_parallel"])
    monkeypatch.setattr(st, "WIRED", ("ddp", "ddp_bf16", "powersgd"))  # as before the trainer ran it
    with pytest.raises(st.StrategyUnavailable, match="not wired into the trainer yet; use one of"):
        sm.resolve_strategy(cfg, 1_000, 2)
    with pytest.raises(st.StrategyUnavailable, match="not wired"):
        sm.describe_choice(cfg, 1_000, 1)


def test_describe_choice_names_the_strategy_and_why():
    cfg = load_config(None, ["scaling.strategy=auto", "scaling.use_gpu=true"])
    line = sm.describe_choice(cfg, 63_001, 4)
    name, _ = sm.resolve_strategy(cfg, 63_001, 4)
    assert f"gradient strategy: {name} (scaling.strategy=auto)" in line and "g5.2xlarge" in line
    assert "one rank" in sm.describe_choice(cfg, 63_001, 1)
    fixed = load_config(None, ["scaling.strategy=ddp_bf16"])
    assert sm.describe_choice(fixed, 63_001, 4).endswith("ddp_bf16: set by scaling.strategy")


def test_auto_must_be_resolved_before_a_hook_is_registered():
    with pytest.raises(ValueError, match="resolve"):
        st.register_comm_hook(object(), "auto")


# ---------------------------------------------------------------- hooks on 2 gloo processes


def _hook_rank(rank: int, world: int, directory: str) -> dict:
    out = _hooks_on_cnet(rank, world)
    out["resume"] = _powersgd_resume(rank, world, directory)
    return out


def _hooks_on_cnet(rank: int, world: int) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ld4mrec_dist.cnet import CNet

    g = torch.Generator().manual_seed(10 + rank)  # different data per rank
    x = (torch.rand(B, I, generator=g) < 0.01).float()
    tf, c, e = torch.randn(B, D, generator=g), torch.randn(B, K, generator=g), torch.randn(B, DIMS[0], generator=g)
    counted: list[tuple[int, int]] = []  # (bytes, calls) per backward
    real = dist.all_reduce

    def counting(tensor, *a, **k):
        counted[-1] = (counted[-1][0] + tensor.numel() * tensor.element_size(), counted[-1][1] + 1)
        return real(tensor, *a, **k)

    dist.all_reduce = counting  # the hooks call torch.distributed.all_reduce
    out = {}
    try:
        for name in ("ddp", "ddp_bf16", "powersgd"):
            torch.manual_seed(0)  # the same initial C-Net on both ranks
            cnet = CNet(I, D, K, list(DIMS))
            ddp = DistributedDataParallel(cnet)
            st.register_comm_hook(ddp, name, start_iter=2)
            local = []
            for _ in range(4):  # PowerSGD: 2 plain steps, then compressed ones (no update: same gradients)
                counted.append((0, 0))
                cnet.zero_grad(set_to_none=True)
                ddp(x, tf, c, [e]).pow(2).mean().backward()
                local = [p.grad.detach().clone() for p in cnet.parameters()]
            out[name] = {"grads": [t.numpy() for t in local], "bytes": counted[-1][0], "calls": counted[-1][1]}
        torch.manual_seed(0)
        cnet = CNet(I, D, K, list(DIMS))
        cnet(x, tf, c, [e]).pow(2).mean().backward()  # this rank's own gradient, no DDP
        out["local"] = [p.grad.numpy() for p in cnet.parameters()]
    finally:
        dist.all_reduce = real
    return out


N_STEPS, M_STEPS = 4, 2  # PowerSGD from step 2: the checkpoint holds 2 steps of error feedback


def _powersgd_resume(rank: int, world: int, directory: str) -> dict:
    """The trainer's data-parallel engine with PowerSGD (plain all-reduce for 2 steps, C-Net
    in 2 DDP buckets): N steps in epoch 0 and M in epoch 1 uninterrupted; the same N steps,
    a checkpoint (engine.full_state → train/state.py's form → save_checkpoint, by rank 0),
    then a fresh model and engine that load it and run the M steps; the same with the
    PowerSGD state left out of the checkpoint and with one of 4 ranks. Returns the C-Net
    and z_in digests and what the loads printed."""
    import contextlib
    import io
    import types
    from pathlib import Path

    import torch.distributed as dist

    from ld4mrec_dist.config import Config, DiffusionSection, ModelSection, TrainSection
    from ld4mrec_dist.model import LD4MRec
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.timing import untimed
    from ld4mrec_dist.train.checkpoint import load_checkpoint, save_checkpoint
    from ld4mrec_dist.train.engine import DataParallel, digest
    from ld4mrec_dist.train.state import LoopState, checkpoint_state, restored_loop

    users = 8
    cfg = Config(model=ModelSection(hidden=D, svd_rank=K), diffusion=DiffusionSection(steps=5, history=2),
                 train=TrainSection(batch_size=B))
    g = torch.Generator().manual_seed(3)
    r_UI = (torch.rand(users, I, generator=g) < 0.005).float()
    r_UI[:, 0] = 1.0
    feats, v_IK = {"text": torch.randn(I, DIMS[0], generator=g)}, torch.randn(I, K, generator=g)
    worker = types.SimpleNamespace(rank=rank, world=world, device=torch.device("cpu"))

    def engine() -> DataParallel:
        torch.manual_seed(cfg.train.seed)
        model = LD4MRec(cfg.model, cfg.diffusion, users, I, item_factors=v_IK, item_features=feats,
                        item_degree=r_UI.sum(0))
        eng = DataParallel(model, cfg, worker, "powersgd")
        eng.hook_state.start_powerSGD_iter = 2
        return eng

    def steps(eng: DataParallel, sampler: SamplerHistory, epoch: int, n: int) -> None:
        eng.start_epoch(epoch)
        for s in range(n):
            users_B = (torch.arange(B) + 3 * s + 4 * rank) % users
            eng.step(sampler, users_B, r_UI[users_B].to_sparse_csr(), False, untimed)

    def digests(eng: DataParallel) -> tuple[str, str]:
        return eng.cnet_digest(), digest([eng.model.z_in.weight])

    whole = engine()
    sampler = SamplerHistory.empty(whole.model.schedule.steps, cfg.diffusion)
    steps(whole, sampler, 0, N_STEPS)
    steps(whole, sampler, 1, M_STEPS)
    out: dict = {"whole": digests(whole), "iter": whole.hook_state.iter}

    first = engine()
    sampler = SamplerHistory.empty(first.model.schedule.steps, cfg.diffusion)
    steps(first, sampler, 0, N_STEPS)
    full = first.full_state()
    ck = Path(directory) / "ck"
    if rank == 0:
        save_checkpoint(ck, checkpoint_state(full, first.model, sampler, LoopState(epoch=1, global_step=N_STEPS),
                                             cfg, "test"))
    dist.barrier()
    saved = load_checkpoint(ck)  # weights_only=True
    out["saved_ranks"] = len(saved["powersgd"])
    out["saved_error_buckets"] = sorted(saved["powersgd"][rank]["error_dict"])
    variants = {"resumed": lambda saved: saved,
                "no_state": lambda saved: {k: v for k, v in saved.items() if k != "powersgd"},
                "four_ranks": lambda saved: {**saved, "powersgd": saved["powersgd"] * 2}}
    for name, edit in variants.items():
        variant = edit(load_checkpoint(ck))  # afresh: a loaded optimizer steps the checkpoint's own tensors
        again = engine()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            again.load_state(variant)
        sampler, _ = restored_loop(variant)
        steps(again, sampler, 1, M_STEPS)
        out[name] = {"digests": digests(again), "printed": printed.getvalue(), "iter": again.hook_state.iter}
    return out


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    return gloo_spawn(_hook_rank, WORLD, (str(tmp_path_factory.mktemp("powersgd")),), free_port())


def _as_tensors(arrays):
    return [torch.from_numpy(a) for a in arrays]


def test_ddp_averages_the_ranks_gradients(hooked):
    mean = [(a + b) / 2 for a, b in zip(_as_tensors(hooked[0]["local"]), _as_tensors(hooked[1]["local"]),
                                        strict=True)]
    for r in range(WORLD):
        for got, want in zip(_as_tensors(hooked[r]["ddp"]["grads"]), mean, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_bf16_hook_is_within_bfloat16_rounding_of_ddp(hooked):
    ddp, bf16 = (_as_tensors(hooked[0][s]["grads"]) for s in ("ddp", "ddp_bf16"))
    assert any(not torch.equal(a, b) for a, b in zip(ddp, bf16, strict=True))  # the hook did act
    for a, b in zip(ddp, bf16, strict=True):
        # each rank's gradient rounded to 8 mantissa bits, then one bf16 addition: < 3·2⁻⁸ relative
        torch.testing.assert_close(b, a, rtol=3 * 2**-8, atol=3 * 2**-8 * float(a.abs().max()) + 1e-12)
    for a, b in zip(bf16, _as_tensors(hooked[1]["ddp_bf16"]["grads"]), strict=True):
        assert torch.equal(a, b)  # every rank holds the same averaged gradient


def test_powersgd_runs_compresses_and_keeps_ranks_equal(hooked):
    ddp = _as_tensors(hooked[0]["ddp"]["grads"])
    p0, p1 = (_as_tensors(hooked[r]["powersgd"]["grads"]) for r in range(WORLD))
    for a, b in zip(p0, p1, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    fc_in_weight = 0  # [D, I]: compressed to rank 4, so it differs from the exact average
    assert not torch.allclose(p0[fc_in_weight], ddp[fc_in_weight])
    bias = 1  # FC_in's bias is all-reduced whole: exact
    torch.testing.assert_close(p0[bias], ddp[bias], rtol=1e-5, atol=1e-7)


def test_measured_bytes_and_calls_match_the_model(hooked):
    shapes = sm.grad_shapes(I, D, K, DIMS)
    params = sum(math.prod(s) for s in shapes)
    buckets = sm.bucket_count(shapes)
    pq, plain = sm.powersgd_elements(shapes)
    assert (hooked[0]["ddp_bf16"]["bytes"], hooked[0]["ddp_bf16"]["calls"]) == (2 * params, buckets)
    assert (hooked[0]["powersgd"]["bytes"], hooked[0]["powersgd"]["calls"]) == (4 * (pq + plain), 3 * buckets)


def test_powersgd_resume_continues_bitwise(hooked):
    """N steps, checkpoint, rebuild, load, M steps == N + M uninterrupted steps, bit for bit:
    the checkpoint carries each rank's PowerSGD state (2 buckets' error feedback per rank)."""
    for r, out in enumerate(hooked):
        res = out["resume"]
        assert res["saved_ranks"] == WORLD and res["saved_error_buckets"] == [0, 1]
        assert res["resumed"]["digests"] == res["whole"], r
        assert res["resumed"]["iter"] == res["iter"] == N_STEPS + M_STEPS
        assert res["resumed"]["printed"] == ""
    assert hooked[0]["resume"]["whole"][0] == hooked[1]["resume"]["whole"][0]  # C-Net replicas agree


def test_powersgd_without_its_state_or_on_another_world_size_starts_afresh(hooked):
    for r, out in enumerate(hooked):
        res = out["resume"]
        fresh, moved = res["no_state"], res["four_ranks"]
        assert fresh["digests"][0] != res["whole"][0]  # the state matters: without it the run differs
        assert moved["digests"] == fresh["digests"]  # a world-size change is a fresh start, no error
        assert fresh["iter"] == moved["iter"] == M_STEPS
        if r == 0:
            assert fresh["printed"].count("\n") == moved["printed"].count("\n") == 1
            assert "PowerSGD starts afresh" in fresh["printed"] and "holds no PowerSGD state" in fresh["printed"]
            assert "PowerSGD state is of 4 ranks, this run has 2" in moved["printed"]
        else:
            assert fresh["printed"] == moved["printed"] == ""
