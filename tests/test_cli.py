"""The pplvae command: a tiny real run end to end, and bad input that writes nothing."""

import subprocess
import sys

import pandas as pd
import pytest
from matplotlib import image

from pplvae.cli import main

TINY = ["--train-size", "500", "--test-size", "200", "--z-dim", "2", "--hidden-dims", "32",
        "--batch-size", "100", "--no-progress", "--device", "cpu"]


def test_train_sample_reconstruct(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(run), "--data-dir", str(data_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "final test ELBO" in out and "nats per datapoint" in out
    for name in ["config.json", "checkpoint.pt", "metrics.csv"]:
        assert (run / name).stat().st_size > 0, name
    for name in ["samples.png", "reconstructions.png", "elbo.png", "manifold.png", "latent_means.png"]:
        assert _is_a_picture(run / name), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[:3]) == ["epoch", "train_elbo", "test_elbo"] and len(metrics) == 2

    assert main(["train", "--epochs", "3", "--out", str(run), "--resume", "--data-dir", str(data_dir),
                 "--no-progress"]) == 0
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2, 3]

    assert main(["sample", str(run), "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert main(["reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--data-dir", str(data_dir),
                 "--device", "cpu"]) == 0
    assert _is_a_picture(tmp_path / "s.png") and _is_a_picture(tmp_path / "r.png")


def _is_a_picture(path) -> bool:
    """A PNG that decodes to an image with more than one colour (not empty, not blank)."""
    pixels = image.imread(path)
    return pixels.ndim == 3 and min(pixels.shape[:2]) >= 28 and float(pixels.std()) > 0


def test_missing_data_folder_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--data-dir", str(tmp_path / "nowhere"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "--download" in err
    assert not run.exists()


def test_existing_run_needs_resume(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--epochs", "1", "--out", str(run), "--data-dir", str(data_dir), *TINY]
    assert main(args) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "No checkpoint" in capsys.readouterr().err


def test_unknown_dataset_is_rejected_by_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pplvae.cli", "train", "--dataset", "cifar",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'cifar'" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, match", [("--batch-size", "0", "batch_size"),
                                                ("--device", "tpu", "device")])
def test_bad_numbers_are_rejected_before_anything_is_written(tmp_path, data_dir, capsys, flag, value, match):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data-dir", str(data_dir), *TINY, flag, value]) == 2
    assert match in capsys.readouterr().err and not run.exists()
