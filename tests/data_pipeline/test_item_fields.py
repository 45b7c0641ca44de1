"""Item tables -> modalities: kinds chosen from the fields, overrides, skips with reasons, the
manifest's record, CSV item tables and typed headers in --item-text (fake encoder, no model)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import item_fields as itf
from data_pipeline import text_features as tf
from data_pipeline.dataset import open_dataset
from data_pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))
import prepare as cli  # noqa: E402

WORDS = "red blue night city river love war star dark moon king road last winter summer ghost".split()
GENRES = "Action Comedy Drama Horror Romance SciFi".split()


class FakeEncoder:
    """5-wide rows from each text's hash: no model, no download."""

    name = "fake-encoder-v1"

    def encode(self, texts):
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:5], np.uint8) / 255.0 for t in texts])


@pytest.fixture
def recbole_dir(tmp_path):
    """toy.inter (20 users × 24 items) + toy.item: title token_seq, year token, genre token_seq, code token."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "toy"
    folder.mkdir()
    items = ["item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\tcode:token"]
    for i in range(24):
        title = " ".join(rng.choice(WORDS, 3, replace=False)) + f" {i}"
        genre = " ".join(sorted(rng.choice(GENRES, 2, replace=False)))
        items.append(f"i{i}\t{title}\t{1970 + 2 * i}\t{genre}\tc{i}")
    (folder / "toy.item").write_text("\n".join(items) + "\n")
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"u{u}\ti{i}\t5\t{k}" for u in range(20) for k, i in enumerate(rng.choice(24, 10, replace=False))]
    (folder / "toy.inter").write_text("\n".join(inter) + "\n")
    return folder


def prepare(tmp_path, monkeypatch, *args):
    monkeypatch.setattr(tf, "make_encoder", lambda *a, **k: FakeEncoder())
    return cli.main([*args, "--cache-dir", str(tmp_path / "cache"), "--no-progress"])


def test_recbole_item_fields_become_modalities(tmp_path, monkeypatch, capsys, recbole_dir):
    assert prepare(tmp_path, monkeypatch, "--source", "recbole", "--path", str(recbole_dir),
                   "--out", str(tmp_path / "ds")) == 0
    out = capsys.readouterr().out
    manifest = open_dataset(tmp_path / "ds").manifest
    assert [(m["name"], m["dim"]) for m in manifest["modalities"]] == [("title", 5), ("year", 1), ("genre", 6)]
    kinds = {n: d["kind"] for n, d in manifest["config"]["modalities"].items()}
    assert kinds == {"title": "text", "year": "dense", "genre": "multi_hot"}
    fields = {f["field"]: f for f in manifest["config"]["item_fields"]["fields"]}
    assert fields["code"]["kind"] == "skip" and "identifier" in fields["code"]["reason"]
    assert all(f["by"] == "auto" for f in fields.values()) and manifest["config"]["item_fields"]["file"] == "toy.item"
    assert manifest["config"]["text"] == {"encoder": "fake-encoder-v1", "modalities": ["title"]}
    assert "modalities title[5], year[1], genre[6]" in out
    table = out[out.index("modality  kind"):]
    assert "genre     multi_hot      6  100.0%" in table and "all 6 values" in table
    assert "skipped item field code (token): a different value for every item (an identifier)" in table
    year = open_dataset(tmp_path / "ds").feature("year")
    assert abs(year.mean()) < 1e-5 and abs(year.std() - 1) < 1e-4            # standardised


def test_item_fields_override_and_unknown_field(tmp_path, monkeypatch, capsys, recbole_dir):
    base = ["--source", "recbole", "--path", str(recbole_dir)]
    assert prepare(tmp_path, monkeypatch, *base, "--item-fields", "title:token_seq:skip,year:multi_hot,code:skip",
                   "--out", str(tmp_path / "ds")) == 0
    out = capsys.readouterr().out
    manifest = open_dataset(tmp_path / "ds").manifest
    assert [(m["name"], m["dim"]) for m in manifest["modalities"]] == [("year", 24), ("genre", 6)]
    fields = {f["field"]: f for f in manifest["config"]["item_fields"]["fields"]}
    assert (fields["title"]["kind"], fields["title"]["by"], fields["genre"]["by"]) == ("skip", "override", "auto")
    assert "skipped item field title (token_seq): --item-fields title:skip" in out and "text" not in manifest["config"]
    assert prepare(tmp_path, monkeypatch, *base, "--item-fields", "plot:text", "--out", str(tmp_path / "x")) == 2
    assert "--item-fields names ['plot'], which toy.item does not have" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args([*base, "--out", "x", "--item-fields", "title:embedding"])
    assert "KIND one of" in capsys.readouterr().err
    assert prepare(tmp_path, monkeypatch, *base, "--no-text", "--out", str(tmp_path / "nt")) == 0
    assert [m["name"] for m in open_dataset(tmp_path / "nt").manifest["modalities"]] == ["year", "genre"]


def test_csv_item_table(tmp_path, monkeypatch, capsys):
    rows = ["uid,iid,ts"] + [f"{u},m{i},{k}" for u in range(6) for k, i in enumerate(range(u, u + 8))]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    items = ["iid,description,brand,tags,price"]
    for i in range(14):
        desc = f"a {WORDS[i]} story about {WORDS[(i + 3) % 16]} number {i}"
        items.append(f"m{i},{desc},{'acme' if i % 2 else 'zeta'},{'new|sale' if i % 3 else 'old'},{i + 0.5}")
    items.append("m99,never rated,acme,old,1")
    (tmp_path / "items.csv").write_text("\n".join(items[:-3] + items[-2:]) + "\n")    # m11 has no row
    assert prepare(tmp_path, monkeypatch, "--source", "csv", "--path", str(tmp_path / "r.csv"), "--col-user", "uid",
                   "--col-item", "iid", "--col-timestamp", "ts", "--items", str(tmp_path / "items.csv"),
                   "--out", str(tmp_path / "ds")) == 0
    manifest = open_dataset(tmp_path / "ds").manifest
    described = manifest["config"]["modalities"]
    assert [(m["name"], described[m["name"]]["kind"], m["dim"]) for m in manifest["modalities"]] == [
        ("description", "text", 5), ("brand", "multi_hot", 2), ("tags", "multi_hot", 3), ("price", "dense", 1)]
    assert described["brand"]["coverage"] == pytest.approx(12 / 13, abs=1e-5)     # 13 rated items, m11 without row
    assert "items.csv" in [f["name"] for f in manifest["source"]["files"]]
    assert "description  text" in capsys.readouterr().out


def test_item_text_names_a_typed_header_of_an_item_file(tmp_path, monkeypatch, capsys, recbole_dir):
    spec = f"plot={recbole_dir / 'toy.item'}:title:token_seq"
    assert prepare(tmp_path, monkeypatch, "--source", "recbole", "--path", str(recbole_dir), "--item-text", spec,
                   "--item-fields", "title:skip", "--out", str(tmp_path / "ds")) == 0
    manifest = open_dataset(tmp_path / "ds").manifest
    assert [m["name"] for m in manifest["modalities"]] == ["plot", "year", "genre"]
    assert manifest["config"]["text"]["modalities"] == ["plot"]
    name, feat = tf.item_text_feature(f"{recbole_dir / 'toy.item'}:title", "item_id", np.array(["i3", "i0"]),
                                      FakeEncoder(), None)
    titles = dict(line.split("\t")[:2] for line in (recbole_dir / "toy.item").read_text().splitlines()[1:])
    np.testing.assert_array_equal(feat.array, FakeEncoder().encode([titles["i3"], titles["i0"]]).astype(np.float32))


def field(values, ftype="token", sep=None):
    return itf.ItemField("f", ftype, values, sep)


@pytest.mark.parametrize("values, ftype, kind, why", [
    (["1 2", "3 4"], "float_seq", "dense", "vector"),
    (["1995", "1996", None, "1997"] * 4, "token", "multi_hot", "numeric codes"),
    ([str(1900 + i) for i in range(30)], "token", "dense", "30 distinct"),
    (["Action Drama", "Drama", "Comedy Action"] * 5, "token_seq", "multi_hot", "tag list"),
    (["the red night", "blue city river", "a long war"], "token_seq", "text", "free text"),
    (["12 31 7", "40 52 6", "70 81 9"], "token_seq", "multi_hot", "tag list"),
    (["sony", "acme", "sony"], "token", "multi_hot", "category"),
    (["x1", "x2", "x3"], "token", "skip", "identifier"),
    ([None, None], "token", "skip", "no item has a value"),
])
def test_auto_kind_follows_type_and_values(values, ftype, kind, why):
    choice = itf.auto_kind(field(values, ftype))
    assert choice.kind == kind and why in choice.reason


def test_high_cardinality_multi_hot_keeps_the_most_frequent_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(itf, "MAX_TAGS", 2)
    f = field(["a b", "a c", "a b d", None], "token_seq")
    table = itf.ItemTable(tmp_path / "t.item", "item_id", [f], np.array([0, 1, 2, -1]), 2)
    feat, coverage, detail = itf.multi_hot(table, f)
    np.testing.assert_array_equal(feat.array, [[1, 1], [1, 0], [1, 1], [0, 0]])   # columns a, b
    assert coverage == 0.75 and "top 2 of 4 values" in detail


def test_manifest_record_is_plain_json(tmp_path, monkeypatch, recbole_dir):
    assert prepare(tmp_path, monkeypatch, "--source", "recbole", "--path", str(recbole_dir),
                   "--out", str(tmp_path / "ds")) == 0
    config = json.loads((tmp_path / "ds" / "manifest.json").read_text())["config"]
    assert set(config["modalities"]["genre"]) == {"kind", "fields", "coverage", "detail"}


def test_parse_item_fields_errors():
    assert itf.parse_item_fields("title:text, year:token:skip") == {"title": "text", "year": "skip"}
    with pytest.raises(DataError, match="FIELD:KIND"):
        itf.parse_item_fields("title")


def test_item_table_errors_name_the_file_and_the_fix(tmp_path):
    ids = np.array(["a", "b"])
    (tmp_path / "t.item").write_text("item_id:token\tgenre:token_seq\na\tx\nb\ty\na\tz\n")
    with pytest.raises(DataError, match=r"t.item: item_id 'a' has more than one row \(lines 2 and 4\)"):
        itf.read_item_table(tmp_path / "t.item", "item_id", ids)
    (tmp_path / "t.item").write_text("item_id\tgenre\na\tx\n")
    with pytest.raises(DataError, match="typed headers like user_id:token"):
        itf.read_item_table(tmp_path / "t.item", "item_id", ids)
    (tmp_path / "t.csv").write_text("iid,genre\na,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id'\].*--col-item"):
        itf.read_item_table(tmp_path / "t.csv", "item_id", ids)
    (tmp_path / "t.csv").write_text("item_id,price\na,1\nb,cheap\n")
    table = itf.read_item_table(tmp_path / "t.csv", "item_id", ids)
    with pytest.raises(DataError, match=r"'price', line 3: 'cheap' is not a number"):
        itf.item_modalities(table, lambda: None, None, {"price": "dense"})


def test_mmrec_features_stay_as_given_beside_an_item_table(tmp_path, monkeypatch, capsys, make_mmrec):
    folder = make_mmrec(n_items=12)
    (tmp_path / "items.csv").write_text("item_id,brand\n" + "".join(f"{i},b{i % 3}\n" for i in range(12)))
    assert prepare(tmp_path, monkeypatch, "--source", "mmrec", "--path", str(folder), "--items",
                   str(tmp_path / "items.csv"), "--out", str(tmp_path / "ds")) == 0
    manifest = open_dataset(tmp_path / "ds").manifest
    assert [(m["name"], m["dim"]) for m in manifest["modalities"]] == [("brand", 3), ("text", 3), ("image", 5)]
    assert manifest["config"]["modalities"]["text"]["detail"] == "text_feat.npy, as given"
    np.testing.assert_array_equal(open_dataset(tmp_path / "ds").feature("text"),
                                  np.load(folder / "text_feat.npy"))
