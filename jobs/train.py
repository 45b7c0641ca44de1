"""Train LD4MRec on Ray Train.

    python jobs/train.py                                  # small synthetic data, 2 workers
    python jobs/train.py --smoke-test                     # tiny data, 3 epochs, in-process (no Ray start-up)
    python jobs/train.py --config jobs/configs/baby.yaml train.lr=0.0005   # YAML: any subset of the keys below
    python jobs/train.py data.path=data/mine-clean --print-config   # show the resolved config, run nothing
    python jobs/train.py --resume runs/<run-name>          # continue from the newest intact checkpoint
    python jobs/train.py --resume runs/<run-name> --from-checkpoint checkpoint_<…>   # from that one
    ray job submit --working-dir . -- python jobs/train.py data.path=/data/baby-clean

Overrides are `section.field=value`, anywhere on the line. Outputs go to
run.storage/run.name (default runs/<dataset>-<ablation>-<time>): config.yaml, metrics.jsonl,
final_metrics.json, curves.png, best_model.pt, checkpoints and TensorBoard event files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.cli import print_config, run_cli, split_overrides
from ld4mrec_dist.cli_help import keys_help

# In-process: no Ray start-up (20-30 s on 2 cores); training itself takes seconds, importing PyTorch comes on top.
SMOKE_TEST = ["data.synthetic=tiny", "train.epochs=3", "train.batch_size=32", "model.hidden=32",
              "model.svd_rank=8", "scaling.num_workers=0"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=keys_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any subset of the config sections")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="resume this run from its newest intact checkpoint (its config.yaml is the base)")
    parser.add_argument("--from-checkpoint", metavar="NAME",
                        help="with --resume: resume from this checkpoint directory of the run instead")
    parser.add_argument("--smoke-test", action="store_true",
                        help="the tiny synthetic dataset, 3 epochs, in this process (no Ray workers to start)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (defaults, --config, --resume, overrides) and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="configuration overrides, anywhere on the line (the keys are listed below)")
    flags, overrides = split_overrides(argv)
    args = parser.parse_args(flags)
    args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = (SMOKE_TEST if args.smoke_test else []) + list(args.overrides)
    if args.print_config:
        return print_config(args.config, args.resume, overrides, args.from_checkpoint)
    return run_cli(args.config, args.resume, overrides, args.from_checkpoint)


if __name__ == "__main__":
    sys.exit(main())
