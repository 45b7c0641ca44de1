"""jobs/prepare.py: the CLI end to end on tiny inputs."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))
import prepare as cli  # noqa: E402


def test_synthetic_prints_summary(tmp_path, capsys):
    assert cli.main(["--source", "synthetic", "--shape", "tiny", "--setting", "noisy", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "natural" in out and "train" in out and "sparsity" in out
    assert (tmp_path / "tiny-noisy-seed2024" / "manifest.json").is_file()


def test_csv_with_mapping_and_existing_output(tmp_path, capsys):
    lines = ["u,i,r,t"] + [f"{u},{i},5,{k}" for u in range(4) for k, i in enumerate(range(u, u + 10))]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    args = ["--source", "csv", "--path", str(tmp_path / "r.csv"), "--col-user", "u", "--col-item", "i",
            "--col-rating", "r", "--col-timestamp", "t", "--out", str(tmp_path / "ds"), "--no-progress"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "r.csv").write_text("user,item\n1,2\n")
    assert cli.main(["--source", "csv", "--path", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing column" in err and "Traceback" not in err


def test_flag_misuse_is_refused():
    with pytest.raises(SystemExit):
        cli.parse_args(["--source", "mmrec", "--path", "x"])   # no --out


def test_runs_as_a_script_from_anywhere(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--rows-per-shard" in done.stdout


def test_noise_ratio_and_all_random_noise_are_recorded(tmp_path, capsys):
    lines = ["u,i,r,t"] + [f"{u},{i},{1 + (i + u) % 5},{k}" for u in range(12) for k, i in enumerate(range(u, u + 20))]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    base = ["--source", "csv", "--path", str(tmp_path / "r.csv"), "--col-user", "u", "--col-item", "i",
            "--col-rating", "r", "--col-timestamp", "t", "--setting", "noisy", "--no-progress"]
    assert cli.main(base + ["--noise-ratio", "0.3", "--natural-noise-share", "0", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(base + ["--noise-ratio", "0.3", "--out", str(tmp_path / "b")]) == 0
    from data_pipeline.dataset import open_dataset

    a, b = (open_dataset(tmp_path / name).manifest for name in "ab")
    assert a["config"]["protocol"]["noise_ratio"] == 0.3 and a["config"]["protocol"]["natural_share"] == 0
    assert a["counts"]["injected_noise"]["natural"] == 0 < a["counts"]["injected_noise"]["random"]
    assert b["counts"]["injected_noise"]["natural"] > 0
    for m in (a, b):
        clean = m["counts"]["kept_per_split"]["train"]
        assert m["counts"]["rows_per_split"]["train"] - clean == int(0.3 * clean + 0.5)
    assert cli.parse_args(["--natural-share", "0.2"]).natural_share == 0.2   # the older spelling still works


def test_every_reader_of_the_table_is_a_source_with_its_checks(capsys):
    from data_pipeline.readers.registry import READERS

    for name, reader in READERS.items():
        if reader.read is None:
            assert cli.parse_args(["--source", name]).source == name
            continue
        with pytest.raises(SystemExit):
            cli.parse_args(["--source", name])                  # every real source needs --out
        assert f"--source {name} needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--source", "mmrec", "--path", "x", "--out", "y", "--feature", "a=b.npy"])
    assert "MMRec features are the <modality>_feat.npy files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--source", "synthetic", "--items", "items.csv"])
    assert "--source synthetic takes --shape" in capsys.readouterr().err
