"""Compare LD4MRec, its ablations and library baselines on one prepared dataset.

    python jobs/compare.py                                       # small synthetic, clean
    python jobs/compare.py --variants none no_bg --seeds 1 2 3 data.setting=noisy
    python jobs/compare.py --baselines ease bpr vbpr mostpop als --variants none no_bg --seeds 1 2 3 \\
        --out runs/compare-ml1m.md data.path=data/ml1m-clean
    python jobs/compare.py --baselines-only --baselines ease bpr --seeds 1 2 3 data.path=data/ml1m-clean
    python jobs/compare.py --quick data.path=data/ml1m-clean     # reduced version, < 15 min on 2 cores

Each variant is a full training run (same config, `model.ablation` switched, selection on
valid); test metrics are taken at the best valid epoch, mean ± std over seeds. Library
baselines (`pip install -e ".[baselines]"`: cornac, implicit) are fitted on the same train
split and scored by the same evaluator; their hyperparameters are chosen on valid over a
small grid (the chosen values are in the table and the JSON), then run once per seed
(once in all for deterministic ones: EASE, MostPop). `time (s)` is one run's wall time.

--quick: first seed only, LD4MRec `none` with at most {quick_epochs} epochs and patience
{quick_patience}, and each baseline's reduced grid (ease, bpr, als, mostpop; add vbpr with
--baselines). Command-line overrides still apply after it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld4mrec_dist.cli import split_overrides
from ld4mrec_dist.config import ABLATIONS, ConfigError, load_config

SMOKE_TEST = ["data.synthetic=tiny", "train.epochs=2", "train.batch_size=32", "model.hidden=32",
              "model.svd_rank=8", "scaling.num_workers=0"]
# ML-1M peaks near epoch 6 with the default config; 15 epochs and patience 3 keep that peak.
QUICK_EPOCHS, QUICK_PATIENCE = 15, 3
QUICK = [f"train.epochs={QUICK_EPOCHS}", f"train.patience={QUICK_PATIENCE}", "scaling.num_workers=0"]
QUICK_BASELINES = ["mostpop", "ease", "bpr", "als"]
QUICK_VARIANTS = ["none"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from ld4mrec_dist.eval.baselines import BASELINES

    description = (__doc__ or "").format(quick_epochs=QUICK_EPOCHS, quick_patience=QUICK_PATIENCE)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base YAML config")
    parser.add_argument("--variants", nargs="*", choices=ABLATIONS,
                        help=f"LD4MRec variants (default: all of {', '.join(ABLATIONS)}); none given: no LD4MRec run")
    parser.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                        help=f"library baselines, any of {', '.join(BASELINES)} (needs the baselines extra)")
    parser.add_argument("--baselines-only", action="store_true", help="run the baselines only, no LD4MRec")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2024])
    parser.add_argument("--out", help="write the table as Markdown here (and JSON beside it)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="seconds: tiny data, 2 epochs, in-process, one seed")
    parser.add_argument("--quick", action="store_true",
                        help="reduced comparison: first seed, short LD4MRec run, small baseline grids")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="configuration overrides, anywhere on the line "
                             "(python jobs/train.py --help lists the keys)")
    flags, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(flags)
    args.overrides = overrides
    return args


def plan(args: argparse.Namespace) -> tuple[list[str], list[str], list[int], list[str]]:
    """(variants, baselines, seeds, overrides) the flags ask for."""
    overrides = list(args.overrides)
    if args.smoke_test:
        overrides = SMOKE_TEST + overrides
    if args.quick:
        overrides = QUICK + overrides
    baselines = args.baselines if args.baselines is not None else (QUICK_BASELINES if args.quick else [])
    if args.baselines_only:
        variants = []
    elif args.variants is not None:
        variants = args.variants
    else:
        variants = QUICK_VARIANTS if args.quick else list(ABLATIONS)
    seeds = args.seeds[:1] if args.quick else args.seeds
    return variants, baselines, seeds, overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ld4mrec_dist.compare import compare, markdown_table
    from ld4mrec_dist.eval.baselines import BaselineError

    variants, baselines, seeds, overrides = plan(args)
    if args.baselines_only and not baselines:
        print("error: --baselines-only needs --baselines NAME ...", file=sys.stderr)
        return 2
    try:
        base = load_config(args.config, overrides)
        rows = compare(base, variants, seeds, baselines, quick=args.quick,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ConfigError, BaselineError) as err:
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
