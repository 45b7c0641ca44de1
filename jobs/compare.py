"""Compare LD4MRec with its ablations and a most-popular ranking on one dataset.

    python jobs/compare.py                                       # small synthetic, clean
    python jobs/compare.py --variants none no_bg --seeds 1 2 3 data.setting=noisy
    python jobs/compare.py --out runs/compare-small.md data.path=/data/baby-clean

Each variant is a full training run (same config, `model.ablation` switched, selection on
valid); the table gives test metrics at the best valid epoch, mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.config import ABLATIONS, ConfigError, load_config  # noqa: E402


SMOKE_TEST = ["data.synthetic=tiny", "train.epochs=2", "train.batch_size=32", "model.hidden=32",
              "model.svd_rank=8", "scaling.num_workers=0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base YAML config")
    parser.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=ABLATIONS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2024])
    parser.add_argument("--out", help="write the table as Markdown here (and JSON beside it)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="seconds: tiny data, 2 epochs, in-process, one seed")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value")
    args = parser.parse_args(argv)

    from ld4mrec_dist.compare import compare, markdown_table

    overrides = list(args.overrides)
    if args.smoke_test:
        overrides = SMOKE_TEST + overrides
    try:
        base = load_config(args.config, overrides)
        rows = compare(base, args.variants, args.seeds)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = markdown_table(rows, base.eval.ks)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
