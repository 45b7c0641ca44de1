"""GPU smoke benchmark (< 3 min on one GPU): fp32 vs bf16 at the `baby` shape.

    python benchmarks/gpu_smoke.py [--steps 200] [--no-ray]

- the ideal loop (the train rows densified on the GPU, `ideal_rows`), `--steps` steps, fp32
  and bf16 autocast;
- the loop's step piece by piece (harness.profiled_steps: RowStore → to_torch_csr → GPU),
  1 process, fp32 and bf16: the full path's per-step cost without Ray's start-up;
- one all-ranking evaluation pass on the test users (one-step scoring), fp32 and bf16;
- the full path through Ray Train with 1 GPU worker (2 epochs, the second measured), fp32
  and bf16, each against an ideal block measured just before it, unless --no-ray.
Rows are appended to results/gpu_smoke.jsonl with the machine's description and printed.
Exits 0 with a one-line "no GPU" row when CUDA is absent. `--device cpu` is a dry run of the
code paths (nothing recorded). `loop_rows` and `ray_rows` are also parts of
benchmarks/gpu_check.py (the one-command GPU check), at other shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    DATA_ROOT,
    Context,
    append_results,
    dataset_path,
    item_factors,
    machine,
    row,
)

BENCH = "gpu_smoke"
Emit = Callable[[dict[str, Any]], None]  # receives each result row as soon as it is measured
PRECISIONS = (False, True)  # bf16 autocast off, on


def prec_name(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def shape_setup(shape: str, data_root: Path = DATA_ROOT, overrides: Sequence[str] = ()) -> tuple[Any, ...]:
    """(dataset path, opened dataset, V_k, config with 2 epochs) of a synthetic shape."""
    from benchmarks.harness import make_config
    from data_pipeline.dataset import open_dataset

    path = dataset_path(shape, data_root)
    ds = open_dataset(path)
    v_IK = item_factors(shape, data_root=data_root)
    cfg = make_config(str(path), ["train.epochs=2", "train.eval_every=2", "scaling.max_failures=0", *overrides])
    return path, ds, v_IK, cfg


def ideal_rows(ds, device: str, max_users: int | None = None):
    """(x [U', I] dense on `device`, users [U']): the train rows of the first U' users,
    densified on the device (never a dense host copy: Electronics' [U, I] is 48 GB)."""
    import torch

    from ld4mrec_dist.rows import to_torch_csr

    csr = ds.split_csr("train")
    n = csr.shape[0] if max_users is None else min(max_users, csr.shape[0])
    return to_torch_csr(csr[:n], device).to_dense(), torch.arange(n, device=device)


def ideal_block(cfg, ds, v_IK, device: str, bf16: bool, steps: int, max_users: int | None = None) -> float:
    """users/s of the ideal loop (harness.ideal_steps) on a freshly built model."""
    from benchmarks.harness import build, ideal_steps

    model, opts = build(cfg, ds, v_IK, device)
    x_UI, users_U = ideal_rows(ds, device, max_users)
    return ideal_steps(model, opts, x_UI, users_U, cfg.train.batch_size, steps, warmup=min(10, steps),
                       bf16=bf16)["users_per_s"]


def free_memory(device: str) -> None:
    """Return the freed tensors' memory (the CUDA cache too) before the next measurement."""
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def loop_rows(shape: str, device: str, steps: int, emit: Emit, data_root: Path = DATA_ROOT,
              overrides: Sequence[str] = (), max_users: int | None = None, eval_users: int | None = None,
              bench: str = BENCH, **extra: Any) -> None:
    """Per precision: the ideal loop, the loop-step harness (ratio to the ideal) and one
    evaluation pass of `eval_users` test users (all when None), each row emitted when measured."""
    from benchmarks.harness import build, profiled_steps
    from benchmarks.inference import timed_eval
    from ld4mrec_dist.eval.evaluator import EvalData
    from ld4mrec_dist.rows import rows_with_items

    _, ds, v_IK, cfg = shape_setup(shape, data_root, overrides)
    train, test = ds.split_csr("train"), ds.split_csr("test")
    store = rows_with_items(train)
    users = ds.eval_users("test")
    users = users if eval_users is None else users[:eval_users]
    common = {"shape": shape, "users": ds.n_users, "items": ds.n_items, "batch": cfg.train.batch_size,
              "hidden": cfg.model.hidden, "device": device, **extra}
    for bf16 in PRECISIONS:
        prec = prec_name(bf16)
        ref = ideal_block(cfg, ds, v_IK, device, bf16, steps, max_users)
        emit(row(bench, f"ideal loop ({shape}, {prec})", ref, "users/s", precision=prec,
                 ideal_users=min(max_users or ds.n_users, ds.n_users), steps=steps, **common))
        free_memory(device)
        model, opts = build(cfg, ds, v_IK, device)
        prof = profiled_steps(model, opts, store, cfg, steps, warmup=min(10, steps), bf16=bf16)
        emit(row(bench, f"loop-step harness, 1 process ({shape}, {prec})", prof["users_per_s"], "users/s",
                 ratio=prof["users_per_s"] / ref, reference=f"ideal loop ({prec}), just before", target=0.8,
                 profile_s=prof["pieces_s"], step_s=prof["step_s"], precision=prec, steps=steps, **common))
        model.eval()
        t_eval, metrics = timed_eval(model.score, EvalData(train, test, users), cfg, device, bf16)
        emit(row(bench, f"one-step eval pass, {len(users):,} test users ({shape}, {prec})", t_eval, "s",
                 users_per_s=len(users) / t_eval, recall20=metrics["recall@20"], precision=prec,
                 **{**common, "eval_users": int(len(users))}))
        del model, opts
        free_memory(device)


def ray_rows(shape: str, device: str, steps: int, emit: Emit, run_id: str, data_root: Path = DATA_ROOT,
             overrides: Sequence[str] = (), bench: str = BENCH, **extra: Any) -> None:
    """The full path through Ray Train, 1 worker (GPU on cuda), 2 epochs (the second
    measured), per precision (fp32 only on a CPU, where the trainer ignores scaling.bf16),
    against an ideal block measured just before the fit."""
    import ray

    from benchmarks.run import start_ray
    from benchmarks.throughput import full_path
    from ld4mrec_dist.config import config_from_dict, config_to_dict

    _, ds, v_IK, cfg = shape_setup(shape, data_root, overrides)
    common = {"shape": shape, "users": ds.n_users, "items": ds.n_items, "batch": cfg.train.batch_size,
              "hidden": cfg.model.hidden, "device": device, **extra}
    for bf16 in PRECISIONS if device == "cuda" else (False,):
        prec = prec_name(bf16)
        ref = ideal_block(cfg, ds, v_IK, device, bf16, steps)
        free_memory(device)
        start_ray()
        try:
            d = config_to_dict(cfg)
            d["scaling"].update(use_gpu=device == "cuda", bf16=bf16, cpus_per_worker=1.0)
            fp = full_path(config_from_dict(d), 1, data_root / "runs", f"{run_id}-{shape}-{prec}")
        finally:
            ray.shutdown()
        emit(row(bench, f"full path: Ray Train, 1 worker ({shape}, {prec})", fp["users_per_s"], "users/s",
                 ratio=fp["users_per_s"] / ref, reference=f"ideal loop ({prec}), just before", target=0.8,
                 precision=prec, **fp, **common))


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train full path (saves ~60 s)")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of this script's code paths")
    args = p.parse_args(argv)
    ctx = Context(mode="gpu_smoke", run_id=time.strftime("%Y%m%d-%H%M%S"),
                  gpu=torch.cuda.is_available() or args.device != "cuda")
    dev = args.device
    mach = machine()
    if not ctx.gpu:
        none = row(BENCH, "no GPU: nothing measured", None, "")
        append_results(ctx, BENCH, [none], mach)
        print(json.dumps(none))
        return 0

    rows: list[dict[str, Any]] = []

    def emit(r: dict[str, Any]) -> None:
        rows.append(r)
        print(json.dumps(r, default=str), flush=True)

    loop_rows("baby", dev, args.steps, emit, gpu=mach["gpu"])
    if not args.no_ray:
        ray_rows("baby", dev, args.steps, emit, ctx.run_id, gpu=mach["gpu"])
    if dev == "cuda":  # a --device cpu dry run records nothing
        append_results(ctx, BENCH, rows, mach)
    return 0


if __name__ == "__main__":
    sys.exit(main())
