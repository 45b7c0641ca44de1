"""GPU smoke benchmark (< 3 min on one GPU): fp32 vs bf16 at the `baby` shape.

    python benchmarks/gpu_smoke.py [--steps 200] [--no-ray]

- the ideal loop (in-memory dense tensor on the GPU), `--steps` steps, fp32 and bf16 autocast;
- the loop's step piece by piece (harness.profiled_steps: RowStore → to_torch_csr → GPU),
  1 process, fp32 and bf16: the full path's per-step cost without Ray's start-up;
- the full path through Ray Train with 1 GPU worker (2 epochs, the second measured), unless
  --no-ray;
- one all-ranking evaluation pass on the test users (one-step scoring), fp32 and bf16.
Rows are appended to results/gpu_smoke.jsonl with the machine's description and printed.
Exits 0 with a one-line "no GPU" row when CUDA is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import Context, append_results, dataset_path, item_factors, machine, row  # noqa: E402

BENCH = "gpu_smoke"


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train full path (saves ~30 s)")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of this script's code paths")
    args = p.parse_args(argv)
    ctx = Context(mode="gpu_smoke", run_id=time.strftime("%Y%m%d-%H%M%S"),
                  gpu=torch.cuda.is_available() or args.device != "cuda")
    dev = args.device
    mach = machine()
    if not ctx.gpu:
        rows = [row(BENCH, "no GPU: nothing measured", None, "")]
        append_results(ctx, BENCH, rows, mach)
        print(json.dumps(rows[0]))
        return 0

    from benchmarks.harness import build, make_config, profiled_steps
    from benchmarks.inference import timed_eval
    from benchmarks.throughput import Ideal, full_path
    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.config import config_from_dict, config_to_dict
    from ld4mrec_dist.eval.evaluator import EvalData
    from ld4mrec_dist.rows import rows_with_items

    path = dataset_path("baby")
    ds = open_dataset(path)
    v_IK = item_factors("baby")
    cfg = make_config(str(path), ["train.epochs=2", "train.eval_every=2", "scaling.max_failures=0"])
    train, test = ds.split_csr("train"), ds.split_csr("test")
    store = rows_with_items(train)
    common = {"shape": "baby", "batch": cfg.train.batch_size, "hidden": cfg.model.hidden, "gpu": mach["gpu"]}
    rows = []
    for bf16 in (False, True):
        prec = "bf16" if bf16 else "fp32"
        ideal = Ideal(cfg, ds, v_IK, torch.get_num_threads(), device=dev, bf16=bf16)
        ideal.block(min(10, args.steps))
        ref = ideal.block(args.steps)
        rows.append(row(BENCH, f"GPU ideal loop ({prec})", ref, "users/s", precision=prec, **common))
        del ideal
        model, opts = build(cfg, ds, v_IK, dev)
        prof = profiled_steps(model, opts, store, cfg, args.steps, warmup=min(10, args.steps), bf16=bf16)
        rows.append(row(BENCH, f"GPU loop-step harness, 1 process ({prec})", prof["users_per_s"], "users/s",
                        ratio=prof["users_per_s"] / ref, reference=f"GPU ideal ({prec})", target=0.8,
                        profile_s=prof["pieces_s"], precision=prec, **common))
        model.eval()
        t_eval, metrics = timed_eval(model.score, EvalData(train, test, ds.eval_users("test")), cfg, dev, bf16)
        rows.append(row(BENCH, f"GPU one-step eval pass, all test users ({prec})", t_eval, "s", precision=prec,
                        recall20=metrics["recall@20"], **common))
        del model, opts
        torch.cuda.empty_cache()
        if not args.no_ray and dev == "cuda":
            import ray

            from benchmarks.run import start_ray

            start_ray()
            d = config_to_dict(cfg)
            d["scaling"].update(use_gpu=True, bf16=bf16, cpus_per_worker=1.0)
            fp = full_path(config_from_dict(d), 1, ROOT / "benchmarks" / ".data" / "runs", f"{ctx.run_id}-{prec}")
            rows.append(row(BENCH, f"GPU full path: Ray Train, 1 worker ({prec})", fp["users_per_s"], "users/s",
                            ratio=fp["users_per_s"] / ref, reference=f"GPU ideal ({prec})", target=0.8,
                            precision=prec, **fp, **common))
            ray.shutdown()
    if dev == "cuda":  # a --device cpu dry run records nothing
        append_results(ctx, BENCH, rows, mach)
    for r in rows:
        print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
