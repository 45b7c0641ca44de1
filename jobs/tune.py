"""Sweep LD4MRec's hyperparameters with Ray Tune; each trial is a full Ray Train run.

    python jobs/tune.py --sweep jobs/configs/sweeps/sr_grid.yaml          # p × γ (paper Fig. 4)
    python jobs/tune.py --sweep jobs/configs/sweeps/schedule_grid.yaml    # s × α_min (Fig. 5)
    python jobs/tune.py --sweep jobs/configs/sweeps/free.yaml data.path=/data/baby-clean
    python jobs/tune.py --sweep jobs/configs/sweeps/sr_grid.yaml --smoke-test   # 4 tiny trials
    python jobs/tune.py --resume runs/sweeps/<name>                       # after an interruption
    python jobs/train.py --config runs/sweeps/<name>/best_config.yaml     # retrain the best

Overrides are `section.field=value` and apply to every trial's base config (on top of
the sweep file's `base_config` and `overrides`). Trials are selected on the sweep's
valid metric; test metrics are reported at that epoch. Outputs land in
<storage>/<name>/: trials.csv, heatmap_*.png (2-D grids), best_config.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.config import ConfigError  # noqa: E402
from ld4mrec_dist.tune.search_space import SweepSpec, base_config, load_sweep  # noqa: E402

SMOKE_TEST = ["data.synthetic=tiny", "train.epochs=3", "train.batch_size=32", "model.hidden=32",
              "model.svd_rank=8", "scaling.cpus_per_worker=0.25"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sweep", metavar="FILE", help="a sweep file (see jobs/configs/sweeps/)")
    what.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (Tune restore)")
    parser.add_argument("--name", help="sweep directory name (default: <sweep name>-<timestamp>)")
    parser.add_argument("--storage", default="runs/sweeps", help="parent of sweep directories "
                        "(on a multi-node cluster: a path every node shares, e.g. NFS)")
    parser.add_argument("--max-concurrent-trials", type=int, default=None, metavar="N",
                        help="overrides the sweep file's max_concurrent_trials (0: what fits now)")
    parser.add_argument("--retry-errored", action="store_true",
                        help="with --resume: also rerun trials that ended in an error")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny data, 3 epochs, the first 2 values of each grid key, 1 worker per trial")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value")
    return parser.parse_args(argv)


def smoke(spec: SweepSpec) -> SweepSpec:
    spec.grid = {k: v[:2] for k, v in spec.grid.items()}
    spec.num_samples = 1 if spec.grid else 2
    spec.workers_per_trial = 1
    spec.asha.grace_period = 1
    spec.max_concurrent_trials = 0
    return spec


def init_ray() -> None:
    import ray

    from ld4mrec_dist.train.trainer import RAY_TRAIN_FAST_ENV

    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():  # inside `ray job submit`, this attaches through RAY_ADDRESS
        ray.init(runtime_env={"env_vars": RAY_TRAIN_FAST_ENV})


def main(argv: list[str] | None = None) -> int:
    from data_pipeline.errors import DataError
    from ld4mrec_dist.tune import sweep

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.resume:
            if args.overrides or args.smoke_test:
                raise ConfigError("--resume takes no overrides: a sweep resumes with the config it started with")
            sweep_dir = Path(args.resume).expanduser().resolve()
            spec, user_base = sweep.read_sweep_dir(sweep_dir)
            init_ray()
            results = sweep.resume_sweep(sweep_dir, retry_errored=args.retry_errored)
        else:
            spec = load_sweep(args.sweep)
            if args.smoke_test:
                spec = smoke(spec)
            user_base = base_config(spec, (SMOKE_TEST if args.smoke_test else []) + list(args.overrides))
            init_ray()
            sweep_dir, results = sweep.start_sweep(
                spec, user_base, args.storage, args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                max_concurrent=args.max_concurrent_trials)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = sweep.summarize(results, spec, user_base, sweep_dir)
    return 0 if summary.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
