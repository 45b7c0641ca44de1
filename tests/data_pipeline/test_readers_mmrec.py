"""MMRec reader: parsing, modality order, and a clear DataError for each malformed input."""

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.readers.mmrec import read_mmrec


def test_reads_rows_split_and_modalities(make_mmrec):
    rows = [(0, 1, 5, 10, 0), (0, 2, 3, 11, 1), (1, 0, 4, 12, 2), (1, 1, 5, 13, 0)]
    folder = make_mmrec(rows, header="userID\titemID\trating\ttimestamp\tx_label", n_items=3)
    src = read_mmrec(folder)
    assert src.n_rows == 4 and src.n_items == 3
    assert list(src.features) == ["text", "image"]
    np.testing.assert_array_equal(src.split, [0, 1, 2, 0])
    np.testing.assert_array_equal(src.rating, [5, 3, 4, 5])
    assert src.item_ids.tolist() == ["0", "1", "2"]


def test_x_label_is_optional(make_mmrec):
    src = read_mmrec(make_mmrec())
    assert src.split is None and src.timestamp is not None


@pytest.mark.parametrize("header, rows, match", [
    ("userID\titem\trating\ttimestamp", [(0, 1, 5, 1)], r"missing column.*itemID"),
    ("userID\titemID\trating\ttimestamp", [(0, 1, 5, 1), (0, 2, "five", 2)], r"'rating', line 3: not a number"),
    ("userID\titemID\trating\ttimestamp", [(0, 1, 5, "yesterday")], r"'timestamp', line 2"),
    ("userID\titemID\trating\ttimestamp", [(0, -1, 5, 1)], r"'itemID', line 2: ids must be non-negative"),
    ("userID\titemID\trating\ttimestamp", [(0.5, 1, 5, 1)], r"'userID', line 2: ids must be integers"),
    ("userID\titemID\trating\ttimestamp\tx_label", [(0, 1, 5, 1, 3)], r"x_label.*not 0/1/2"),
    ("userID\titemID\trating\ttimestamp", [(0, 1, 5, 1), (0, 2, 5)], r"toy.inter.*malformed"),
])
def test_bad_inter_gets_clear_error(make_mmrec, header, rows, match):
    with pytest.raises(DataError, match=match):
        read_mmrec(make_mmrec(rows, header=header, n_items=3))


def test_feature_row_count_must_match_items(make_mmrec):
    folder = make_mmrec([(0, 4, 5, 1)], features={"text": np.zeros((3, 2))})
    with pytest.raises(DataError, match=r"text_feat.npy: 3 feature rows but toy.inter has 5 items"):
        read_mmrec(folder)


def test_feature_must_be_2d(make_mmrec):
    folder = make_mmrec([(0, 1, 5, 1)], features={"text": np.zeros((2, 2))})
    np.save(folder / "text_feat.npy", np.zeros(2))
    with pytest.raises(DataError, match="2-D numeric array"):
        read_mmrec(folder)


def test_directory_needs_one_inter(tmp_path):
    with pytest.raises(DataError, match="exactly one"):
        read_mmrec(tmp_path)
