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

Exit status: 0 when every trial ended without error and one completed (the best config
is written); 1 when a trial failed (the command that reruns the failed trials is
printed), no trial completed, or the sweep stalled (the error names the missing
resource); 2 for a bad sweep file, config or path, or a sweep directory whose Tune state
files the sweep cannot vouch for; 130 when interrupted (Ctrl-C / SIGINT): the summary so
far is written and the command that resumes the sweep is printed. `--resume` keeps the
completed (and ASHA-stopped) trials and runs the interrupted, not-started and failed
ones. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.cli import split_overrides
from ld4mrec_dist.config import ConfigError
from ld4mrec_dist.tune import tune_state
from ld4mrec_dist.tune.search_space import SweepSpec, base_config, load_sweep

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
    # Accepted for commands printed by earlier versions: --resume now always reruns failed trials.
    parser.add_argument("--retry-errored", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny data, 3 epochs, the first 2 values of each grid key, 1 worker per trial")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="configuration overrides for every trial, anywhere on the line "
                             "(python jobs/train.py --help lists the keys)")
    flags, overrides = split_overrides(argv)
    args = parser.parse_args(flags)
    args.overrides = overrides
    return args


def smoke(spec: SweepSpec) -> SweepSpec:
    spec.grid = {k: v[:2] for k, v in spec.grid.items()}
    spec.num_samples = 1 if spec.grid else 2
    spec.workers_per_trial = 1
    spec.asha.grace_period = 1
    spec.max_concurrent_trials = 0
    return spec


INTERRUPTED_EXIT = 130  # the shell's code for a SIGINT


def init_ray() -> None:
    import ray

    from ld4mrec_dist.train.launch import RAY_TRAIN_FAST_ENV

    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)
    # The raylet warns that "N PYTHON worker processes have been started ... 4x the maximum
    # expected startup concurrency" (the CPU count): a sweep's trial actors, Ray Train
    # controllers and workers pass that on a small host without anything being wrong.
    # Ray's knob for it raises the threshold; it only applies to a Ray instance started here.
    os.environ.setdefault(STARTUP_CONCURRENCY_ENV, str(max(8, os.cpu_count() or 1)))
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or RAY_ADDRESS=auto on a head node
        ray.init(runtime_env={"env_vars": RAY_TRAIN_FAST_ENV})
        return
    # Our own instance (a bare ray.init() would join whichever Ray instance another user last
    # started on this host), with its dashboard on a port we know, named to every worker:
    # Ray Train's placement-group cleaner asks the State API whether a trial's controller is
    # alive, and without an address it asks whichever instance on the host it finds: it then
    # fails (the groups of stopped trials leak) or, told "no such actor" by another user's
    # cluster, removes a live trial's workers.
    port = free_port()
    env = {**RAY_TRAIN_FAST_ENV, STATE_API_ENV: f"http://127.0.0.1:{port}"}
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             runtime_env={"env_vars": env})


STATE_API_ENV = "RAY_API_SERVER_ADDRESS"
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resume_command(sweep_dir: Path) -> str:
    """The exact command that continues this sweep (and reruns its failed trials),
    runnable from the current directory."""
    script = Path(__file__).resolve()
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        shown = script
    return f"python {shown} --resume {sweep_dir}"


def interrupted(sweep_dir: Path | None, note: str = "") -> int:
    """Exit status 130, with how to resume (when Tune saved the sweep's state)."""
    from ray import tune

    if sweep_dir is not None and tune.Tuner.can_restore(str(sweep_dir)):
        print(f"[ld4mrec] sweep interrupted{note}; resume it with:\n    {resume_command(sweep_dir)}",
              file=sys.stderr, flush=True)
    else:
        print(f"[ld4mrec] sweep interrupted before its first trial started{note}: start it again",
              file=sys.stderr, flush=True)
    return INTERRUPTED_EXIT


def main(argv: list[str] | None = None) -> int:
    from data_pipeline.errors import DataError
    from ld4mrec_dist.tune import sweep

    args = parse_args(sys.argv[1:] if argv is None else argv)
    sweep_dir: Path | None = None
    try:
        if args.resume:
            if args.overrides or args.smoke_test:
                raise ConfigError("--resume takes no overrides: a sweep resumes with the config it started with")
            sweep_dir = Path(args.resume).expanduser().resolve()
            spec, user_base = sweep.read_sweep_dir(sweep_dir)
            tune_state.verify(sweep_dir)  # before Ray starts or Tune unpickles anything
            init_ray()
            results = sweep.resume_sweep(sweep_dir, spec)
        else:
            spec = load_sweep(args.sweep)
            if args.smoke_test:
                spec = smoke(spec)
            user_base = base_config(spec, (SMOKE_TEST if args.smoke_test else []) + list(args.overrides))
            init_ray()
            sweep_dir, tuner = sweep.create_sweep(
                spec, user_base, args.storage, args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                max_concurrent=args.max_concurrent_trials)
            results = tuner.fit()
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (Tune handles the first and returns)
        return interrupted(sweep_dir)
    except Exception as err:
        stalled = stall_error(err)
        if stalled is None:
            raise
        print(f"error: {stalled}", file=sys.stderr)
        if sweep_dir is not None:
            print(f"[ld4mrec] after freeing the resource, continue with:\n    {resume_command(sweep_dir)}",
                  file=sys.stderr, flush=True)
        return 1
    assert sweep_dir is not None
    tune_state.StateRecorder(sweep_dir).record()  # Tune's last write of its state, after the loop
    summary = sweep.summarize(results, spec, user_base, sweep_dir)
    if summary.left_to_run:
        return interrupted(sweep_dir, f" with {summary.left_to_run} of {summary.expected} trial(s) left to run")
    if summary.errored:
        # Trials can stall inside themselves (their data read or worker start waits for a CPU
        # held elsewhere): Tune then records an error per trial instead of raising.
        stalled = next((e for e in map(stall_error, getattr(results, "errors", [])) if e is not None), None)
        what = (f"sweep stalled: {stall_message(stalled)}" if stalled is not None else
                f"{len(summary.errored)} of {summary.expected} trial(s) failed (each one's error is above and "
                f"in {sweep.TRIALS_CSV})")
        print(f"error: {what}\n[ld4mrec] rerun the failed trials (completed ones are kept) with:\n"
              f"    {resume_command(sweep_dir)}", file=sys.stderr, flush=True)
        return 1
    if summary.best is None:
        print("error: no trial completed (see the outcome column of trials.csv)", file=sys.stderr, flush=True)
        return 1
    return 0


def stall_message(err: BaseException) -> str:
    """The one-line message of a SweepStalledError, also when Ray wrapped it with a traceback."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else repr(err)
    return last.split("SweepStalledError: ", 1)[-1]


def stall_error(err: BaseException) -> BaseException | None:
    """The SweepStalledError behind `err` (Tune may wrap what a callback raised), or None."""
    from ld4mrec_dist.tune.guard import SweepStalledError

    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, SweepStalledError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
