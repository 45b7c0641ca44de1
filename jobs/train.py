"""Train LD4MRec on Ray Train.

    python jobs/train.py                                  # small synthetic data, 2 workers
    python jobs/train.py --config jobs/configs/baby.yaml train.lr=0.0005
    python jobs/train.py --resume runs/<run-name>          # continue from the newest intact checkpoint
    python jobs/train.py --resume runs/<run-name> --from-checkpoint checkpoint_<…>   # from that one
    ray job submit --working-dir . -- python jobs/train.py data.path=/data/baby-clean

Overrides are `section.field=value` (see ld4mrec_dist/config.py for every field).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.cli import run_cli

SMOKE_TEST = ["data.synthetic=tiny", "train.epochs=3", "train.batch_size=32", "model.hidden=32",
              "model.svd_rank=8", "scaling.num_workers=2"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any subset of the config sections")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="resume this run from its newest intact checkpoint (its config.yaml is the base)")
    parser.add_argument("--from-checkpoint", metavar="NAME",
                        help="with --resume: resume from this checkpoint directory of the run instead")
    parser.add_argument("--smoke-test", action="store_true",
                        help="a seconds-long run on the tiny synthetic dataset")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = (SMOKE_TEST if args.smoke_test else []) + list(args.overrides)
    return run_cli(args.config, args.resume, overrides, args.from_checkpoint)


if __name__ == "__main__":
    sys.exit(main())
