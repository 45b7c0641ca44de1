"""(5) Inference: one all-ranking evaluation pass, one-step reverse process vs T steps.

At the `baby` shape: LD4MRec (T = 5, hidden 256) trained briefly with the ideal loop so
its scores are not random, then the trainer's evaluator (`evaluate`: score, mask train
items, top-K, Recall/NDCG) on the test users, with
- `model.score` (Alg. 2: x̂_θ(x_in, z_in), one C-Net pass: what the trainer uses),
- `model.multi_step_scores(steps=5)` (the classic reverse chain x_5 → x_0 on the same model),
- `multi_step_scores(steps=50)` on a T = 50 copy with the same weights (only the schedule
  buffers differ; its recall is not meaningful, the model was trained for T = 5).
--quick scores 2,048 test users for the three (the one-step pass also on all users).
"""

from __future__ import annotations

import contextlib
import time

import torch

from benchmarks.common import Context, dataset_path, item_factors, row
from benchmarks.harness import build, ideal_steps, make_config

BENCH = "inference"
SHAPE = "baby"


def timed_eval(score_fn, data, cfg, device: str, bf16: bool = False) -> tuple[float, dict]:
    from ld4mrec_dist.eval.evaluator import evaluate

    dev_type = torch.device(device).type
    ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if dev_type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with ctx:
        metrics = evaluate(score_fn, data, cfg.eval.ks, cfg.eval.batch_size, torch.device(device))
    if dev_type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, metrics


def models(cfg, ds, v_IK, device: str, train_steps: int):
    """(T=5 model trained a little, T=50 model with the same weights)."""
    from ld4mrec_dist.config import config_from_dict, config_to_dict

    model5, opts = build(cfg, ds, v_IK, device)
    x_UI = torch.from_numpy(ds.split_csr("train").toarray()).to(device)
    ideal_steps(model5, opts, x_UI, torch.arange(x_UI.shape[0], device=device), cfg.train.batch_size,
                train_steps, warmup=0)
    del x_UI
    d = config_to_dict(cfg)
    d["diffusion"]["steps"] = 50
    model50, _ = build(config_from_dict(d), ds, v_IK, device)
    state = {k: v for k, v in model5.state_dict().items() if not k.startswith("schedule.")}
    model50.load_state_dict(state, strict=False)
    return model5.eval(), model50.eval()


def passes(cfg, ds, v_IK, ctx: Context, device: str, bf16: bool, tag: str) -> list[dict]:
    from ld4mrec_dist.eval.evaluator import EvalData

    model5, model50 = models(cfg, ds, v_IK, device, 20 if ctx.quick else 200)
    train, test = ds.split_csr("train"), ds.split_csr("test")
    users = ds.eval_users("test")
    subset = users[:2048] if ctx.quick else users
    data = EvalData(train, test, subset)
    common = {"shape": SHAPE, "eval_users": int(len(subset)), "hidden": cfg.model.hidden, "device": device,
              "precision": "bf16" if bf16 else "fp32"}
    out = []
    if ctx.quick:
        t_all, m_all = timed_eval(model5.score, EvalData(train, test, users), cfg, device, bf16)
        out.append(row(BENCH, f"{tag}one-step eval pass, all {len(users):,} test users", t_all, "s",
                       users_per_s=len(users) / t_all, recall20=m_all["recall@20"],
                       **{**common, "eval_users": int(len(users))}))
    t1, m1 = timed_eval(model5.score, data, cfg, device, bf16)
    out.append(row(BENCH, f"{tag}one-step eval pass (Alg. 2), {len(subset):,} users", t1, "s",
                   users_per_s=len(subset) / t1, recall20=m1["recall@20"], **common))
    for steps, model in ((5, model5), (50, model50)):
        fn = lambda r, u, m=model, n=steps: m.multi_step_scores(r, u, steps=n)  # noqa: E731
        tn, mn = timed_eval(fn, data, cfg, device, bf16)
        out.append(row(BENCH, f"{tag}T={steps} reverse process eval pass, {len(subset):,} users", tn, "s",
                       ratio=tn / t1, reference="one-step pass time (slowdown ×)", users_per_s=len(subset) / tn,
                       recall20=mn["recall@20"] if steps == 5 else None, **common))
    return out


def run(ctx: Context) -> list[dict]:
    from data_pipeline.dataset import open_dataset

    path = dataset_path(SHAPE, ctx.data_root)
    ds = open_dataset(path)
    v_IK = item_factors(SHAPE, data_root=ctx.data_root)
    cfg = make_config(str(path))
    out = passes(cfg, ds, v_IK, ctx, "cpu", False, "")
    if ctx.gpu:
        for bf16 in (False, True):
            out += passes(cfg, ds, v_IK, ctx, "cuda", bf16, f"GPU {'bf16' if bf16 else 'fp32'}: ")
    return out
