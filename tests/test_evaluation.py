"""The evaluate path on real MNIST: a briefly trained VAE, evaluate_run and ``pplvae evaluate``."""

from __future__ import annotations

import pandas as pd
import pyro
import pytest
import torch

from pplvae import TrainConfig, VAE, VAEConfig, fit, load_dataset
from pplvae.cli import main
from pplvae.data.images import TEST_BINARIZATION_SEED
from pplvae.evaluation import evaluate_run, split_images
from pplvae.runs import EVALUATION, EVALUATION_AIS


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    """A small VAE (784-100-10) fitted for 2 epochs on 2000 MNIST images; run folder with 200 test images."""
    data = load_dataset("mnist", data_dir, train_size=2000, test_size=200)
    pyro.set_rng_seed(0)
    model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=10, hidden_dims=(100,)))
    run_dir = tmp_path_factory.mktemp("run")
    fit(model, data, TrainConfig(epochs=2, batch_size=100, device="cpu"), run_dir)
    return run_dir


def test_bounds_are_ordered_and_the_csv_is_written(trained_run, data_dir):
    """ELBO <= IWAE-5 <= IWAE-50 <= log p̂(x), averaged over 100 test images with K = 200.

    With disjoint groups that nest (5 | 50 | 200) the ordering holds per image
    by Jensen's inequality, not just on average.
    """
    table = evaluate_run(trained_run, num_samples=200, max_examples=100, device="cpu", data_dir=data_dir)
    row = table.iloc[0]
    assert row["elbo"] <= row["iwae_5"] <= row["iwae_50"] <= row["log_px"] < 0
    assert row["iwae_K"] == row["log_px"]
    assert row["num_samples"] == 200 and row["num_data"] == 100 and row["split"] == "test"
    assert 1 <= row["ess_min"] <= row["ess_mean"] <= 200
    assert row["samples_per_second"] == pytest.approx(200 * 100 / row["seconds"])  # K x N per second
    saved = pd.read_csv(trained_run / EVALUATION)
    pd.testing.assert_frame_equal(saved, table, check_exact=False, rtol=1e-12)


def test_same_seed_same_numbers(trained_run, data_dir):
    first = evaluate_run(trained_run, num_samples=20, max_examples=10, device="cpu", data_dir=data_dir, seed=5)
    second = evaluate_run(trained_run, num_samples=20, max_examples=10, device="cpu", data_dir=data_dir, seed=5)
    assert first.loc[0, "log_px"] == second.loc[0, "log_px"]


def test_training_split_is_scored_on_a_fixed_binarization(trained_run, data_dir):
    data = load_dataset("mnist", data_dir, train_size=50, test_size=10)
    x, labels = split_images(data, "train")
    again, _ = split_images(data, "train")
    assert torch.equal(x, again) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x, torch.bernoulli(data.x_train, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED)))
    assert torch.equal(labels, data.y_train)
    table = evaluate_run(trained_run, num_samples=10, split="train", max_examples=20, device="cpu", data_dir=data_dir)
    assert table.loc[0, "split"] == "train" and table.loc[0, "num_data"] == 20


def test_command_prints_the_table_and_writes_the_csv(trained_run, data_dir, capsys):
    (trained_run / EVALUATION).unlink(missing_ok=True)
    status = main(["evaluate", str(trained_run), "--num-samples", "100", "--max-examples", "20",
                   "--device", "cpu", "--data-dir", str(data_dir), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    for label in ("ELBO", "IWAE-5", "IWAE-50", "log p(x)", "± ", "ESS mean / min", "samples/s", EVALUATION):
        assert label in out
    row = pd.read_csv(trained_run / EVALUATION).iloc[0]
    assert f"{row['log_px']:.2f}" in out and f"{row['elbo']:.2f}" in out
    assert f"Pareto k max    {row['pareto_k_max']:10.2f}" in out

    # K = 10 leaves too few weights above the cutoff for a Pareto fit: said so, not printed as "nan"
    assert main(["evaluate", str(trained_run), "--num-samples", "10", "--max-examples", "5",
                 "--device", "cpu", "--data-dir", str(data_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Pareto k max           n/a  (needs 10 weights above the cutoff: K >= 50)" in out and "nan" not in out


def test_bad_requests_are_clear_errors(trained_run, tmp_path, data_dir, capsys):
    with pytest.raises(ValueError, match="Unknown split 'valid'"):
        evaluate_run(trained_run, split="valid")
    with pytest.raises(ValueError, match="max_examples must be a positive"):
        evaluate_run(trained_run, max_examples=0)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        evaluate_run(tmp_path / "nothing", num_samples=5)
    assert main(["evaluate", str(tmp_path / "nothing"), "--num-samples", "5"]) == 2
    assert "No checkpoint" in capsys.readouterr().err


def test_ais_estimator_writes_its_own_csv_and_bounds_the_is_estimate(trained_run, data_dir, capsys):
    """``pplvae evaluate --estimator ais``: 10 images, T = 100, C = 4; a lower bound that beats the ELBO."""
    status = main(["evaluate", str(trained_run), "--estimator", "ais", "--num-steps", "100", "--num-chains", "4",
                   "--max-examples", "10", "--device", "cpu", "--data-dir", str(data_dir), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    row = pd.read_csv(trained_run / EVALUATION_AIS).iloc[0]
    assert row["num_steps"] == 100 and row["num_chains"] == 4 and row["num_data"] == 10
    assert f"{row['log_px']:.2f}" in out and "AIS T = 100" in out
    elbo = evaluate_run(trained_run, num_samples=1, max_examples=10, device="cpu", data_dir=data_dir)
    assert elbo.loc[0, "elbo"] < row["log_px"] < 0
    with pytest.raises(ValueError, match="Unknown estimator"):
        evaluate_run(trained_run, estimator="mcmc")
