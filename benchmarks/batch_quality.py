"""Quality at bigger global batches: which learning-rate rule holds it, on real data.

    python benchmarks/batch_quality.py --data data/ml1m-clean                 # the README's grid
    python benchmarks/batch_quality.py --data data/ml1m-clean --batches 256 2048 --rules sqrt --seeds 1

Scaling out with W data-parallel ranks multiplies the users per step (the global batch
G = train.batch_size × W) and divides the steps per epoch by W; bigger per-rank batches do
the same to amortise each step's all-reduce. This trains full runs (early stopping on
valid, test at the best valid epoch) at several G under each `train.lr_scaling` rule and
several seeds, and reports valid/test Recall@20 and NDCG@20, the best epoch and the steps
to it. One process runs each G in full (`scaling.num_workers=0`, `train.batch_size=G`): the
same updates W ranks of G/W users make together, without W Ray workers on a 2-core host.
Runs land in <out>/runs/<name>/ and are skipped when their final_metrics.json exists, so an
interrupted grid continues where it stopped. Output: <out>/batch_quality.md (table),
<out>/batch_quality.png (valid and test Recall@20 vs G per rule), <out>/batch_quality.jsonl.
Nothing is asserted: selection is on valid; test is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ld4mrec_dist.config import load_config  # noqa: E402
from ld4mrec_dist.train.lr_rule import scaled_lr  # noqa: E402

RULES = ("none", "sqrt", "linear")
METRICS = ("valid/recall@20", "test/recall@20", "test/ndcg@20", "test/recall@10")


def run_name(batch: int, rule: str, seed: int, warmup: int) -> str:
    return f"b{batch}-{rule}" + (f"-w{warmup}" if warmup else "") + f"-s{seed}"


def grid(batches: list[int], rules: list[str], reference: int) -> list[tuple[int, str]]:
    """(G, rule) cells; at G = reference every rule is the same run, so only `none` runs there."""
    return [(b, r) for b in batches for r in rules if b != reference or r == "none"]


def train_one(args: argparse.Namespace, batch: int, rule: str, seed: int) -> dict[str, Any]:
    """One full run (or the finished one already on disk): its final metrics and settings."""
    name = run_name(batch, rule, seed, args.warmup)
    run_dir = args.out / "runs" / name
    final = run_dir / "final_metrics.json"
    overrides = [f"data.path={args.data}", "scaling.num_workers=0", f"train.batch_size={batch}",
                 f"train.lr_scaling={rule}", f"train.seed={seed}", f"train.epochs={args.epochs}",
                 f"train.lr_reference_batch={args.reference}", f"train.lr_warmup_steps={args.warmup}",
                 f"run.storage={args.out / 'runs'}", f"run.name={name}", *args.overrides]
    if not final.is_file():
        log = args.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        with log.open("w") as fh:
            code = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *overrides], stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        if code != 0:
            raise RuntimeError(f"run {name} failed (exit {code}); its output: {log}")
    out = json.loads(final.read_text())
    cfg = load_config(overrides=overrides)
    row = {"batch": batch, "rule": rule, "seed": seed, "warmup": args.warmup, "lr": scaled_lr(cfg.train, 1),
           "best_epoch": out["best_epoch"], "epochs_run": out["epochs_run"], "wall_time_s": out["wall_time_s"],
           **{f"valid/{k}": v for k, v in out["valid"].items()}, **{f"test/{k}": v for k, v in out["test"].items()}}
    print(f"[batch_quality] {name}: lr {row['lr']:.3g}  best epoch {row['best_epoch']}  "
          f"valid R@20 {row['valid/recall@20']:.4f}  test R@20 {row['test/recall@20']:.4f}", flush=True)
    return row


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


def table(rows: list[dict[str, Any]], n_users: int) -> str:
    """One line per (G, rule): mean ± population std over seeds, best epochs, steps to best."""
    lines = ["| global batch G | rule | lr | seeds | valid Recall@20 | test Recall@20 | test NDCG@20 | "
             "test Recall@10 | best epochs | steps to best (mean) |", "| --- " * 10 + "|"]
    cells = sorted({(r["batch"], r["rule"]) for r in rows}, key=lambda c: (c[0], RULES.index(c[1])))
    for batch, rule in cells:
        runs = [r for r in rows if (r["batch"], r["rule"]) == (batch, rule)]
        steps = statistics.fmean(r["best_epoch"] * math.ceil(n_users / batch) for r in runs)
        lines.append(f"| {batch} | {rule} | {runs[0]['lr']:.3g} | {len(runs)} | "
                     + " | ".join(mean_std([r[m] for r in runs]) for m in METRICS)
                     + f" | {', '.join(str(r['best_epoch']) for r in runs)} | {steps:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    smallest = min(r["batch"] for r in rows)  # the reference batch: one run serves every rule there
    for ax, metric in zip(axes, ("valid/recall@20", "test/recall@20"), strict=True):
        for rule in RULES:
            runs_at = {b: [r[metric] for r in rows if r["batch"] == b and (r["rule"] == rule or b == smallest)]
                       for b in sorted({r["batch"] for r in rows})}
            batches = [b for b, vals in runs_at.items() if vals]
            if len(batches) > 1:
                ax.errorbar(batches, [statistics.fmean(runs_at[b]) for b in batches],
                            yerr=[statistics.pstdev(runs_at[b]) for b in batches], marker="o", capsize=3,
                            label=f"lr_scaling={rule}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch G (users per step)")
        ax.set_title(metric.replace("/", " "))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Recall@20 (mean ± std over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset (jobs/prepare.py)")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--rules", nargs="+", default=["none", "sqrt", "linear"], choices=RULES)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--reference", type=int, default=256, help="train.lr_reference_batch")
    p.add_argument("--warmup", type=int, default=0, help="train.lr_warmup_steps of every run")
    p.add_argument("--epochs", type=int, default=300, help="most epochs per run (early stopping ends most)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "batch_quality")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="applied to every run")
    args = p.parse_args(argv)
    if not (args.data / "manifest.json").is_file():
        p.error(f"--data {args.data}: no manifest.json there; prepare it first, e.g. "
                "python jobs/prepare.py --source movielens-1m --setting clean --out data/ml1m-clean")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(b, r, s) for b, r in grid(args.batches, args.rules, args.reference) for s in args.seeds]
    print(f"[batch_quality] {len(jobs)} runs, {args.parallel} at a time, into {args.out}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda job: train_one(args, *job), jobs))
    from data_pipeline.dataset import open_dataset

    n_users = open_dataset(args.data).n_users
    md = table(rows, n_users)
    (args.out / "batch_quality.md").write_text(md + "\n")
    (args.out / "batch_quality.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot(rows, args.out / "batch_quality.png")
    print(md)
    print(f"[batch_quality] table, rows and plot in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
