"""The trainer with each objective: split metrics, KL warm-up, the command-line flags."""

import logging
import math

import pandas as pd
import pyro
import pytest

from pplvae import VAE, TrainConfig, VAEConfig, fit, load_dataset
from pplvae.cli import main


@pytest.fixture(scope="module")
def tiny_mnist(data_dir):
    return load_dataset("mnist", data_dir, train_size=600, test_size=300)


def _fit(data, **options):
    pyro.set_rng_seed(0)
    model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=5, hidden_dims=(32,)))
    config = TrainConfig(batch_size=100, eval_batch_size=150, device="cpu", **{"epochs": 1, **options})
    return fit(model, data, config)


@pytest.mark.parametrize(
    "options, latent",
    [
        (dict(objective="elbo"), "kl"),
        (dict(objective="elbo-analytic", beta=4.0), "kl"),
        (dict(objective="iwae", num_particles=3), "kl"),
        (dict(objective="mmd", mmd_weight=50.0, kernel="imq"), "mmd"),
    ],
)
def test_metrics_split_the_objective(tiny_mnist, options, latent):
    metrics = _fit(tiny_mnist, **options)
    row = metrics.iloc[-1]
    assert metrics.notna().all().all()
    for side in ("train", "test"):
        recon, kl, total = row[f"{side}_reconstruction"], row[f"{side}_kl"], row[f"{side}_total"]
        assert math.isclose(row[f"{side}_elbo"], recon - kl, rel_tol=1e-6)
        assert recon < 0 and kl > 0
        if options["objective"].startswith("elbo"):
            assert math.isclose(total, recon - options.get("beta", 1.0) * kl, rel_tol=1e-6)
        if latent == "mmd":
            assert math.isclose(total, recon - options["mmd_weight"] * row[f"{side}_mmd"], rel_tol=1e-6)
        if options["objective"] == "iwae":
            assert total > row[f"{side}_elbo"]  # K = 3 importance weighting on 300 images
    assert (f"train_{latent}" in metrics) and (f"test_{latent}" in metrics)


def test_kl_warmup_reaches_beta_at_its_end(tiny_mnist):
    metrics = _fit(tiny_mnist, objective="elbo-analytic", beta=2.0, kl_warmup=2, epochs=3)
    assert list(metrics["beta"]) == [1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "options",
    [dict(objective="iwae", kl_warmup=2), dict(objective="mmd", beta=4.0), dict(objective="mmd", num_particles=2),
     dict(objective="elbow"), dict(kl_warmup=-1), dict(kernel="laplace")],
)
def test_config_rejects_options_that_do_not_fit(options):
    with pytest.raises(ValueError):
        TrainConfig(**options)


def test_command_line_flags(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    status = main(["train", "--data-dir", str(data_dir), "--train-size", "300", "--test-size", "200",
                   "--z-dim", "4", "--hidden-dims", "16", "--epochs", "2", "--batch-size", "100",
                   "--objective", "elbo", "--beta", "4", "--kl-warmup", "1", "--no-progress", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["beta"]) == [4.0, 4.0] and "train_kl" in metrics
    assert (out / "elbo.png").exists()
    assert main(["train", "--data-dir", str(data_dir), "--objective", "iwae", "--kl-warmup", "2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "kl_warmup" in capsys.readouterr().err


def test_the_command_line_keeps_pyros_info_messages_out_of_its_output(tmp_path, data_dir):
    """Pyro logs "Guessed max_plate_nesting" at INFO for IWAE's RenyiELBO (to its own stderr handler,
    not propagated); the command emits it only with -v."""
    emitted = []
    collect = logging.Handler()
    collect.emit = lambda record: emitted.append(record.getMessage())
    logging.getLogger("pyro").addHandler(collect)
    run = ["train", "--data-dir", str(data_dir), "--train-size", "100", "--test-size", "50", "--z-dim", "2",
           "--hidden-dims", "8", "--epochs", "1", "--objective", "iwae", "--num-particles", "2", "--no-progress",
           "--device", "cpu"]
    try:
        assert main([*run, "--out", str(tmp_path / "quiet")]) == 0
        assert not any("max_plate_nesting" in message for message in emitted)
        assert main(["-v", *run, "--out", str(tmp_path / "verbose")]) == 0
        assert any("Guessed max_plate_nesting" in message for message in emitted)
    finally:
        logging.getLogger("pyro").removeHandler(collect)
        logging.getLogger("pyro").setLevel(logging.INFO)  # Pyro's own default, for the tests after this one


def test_training_set_smaller_than_the_test_set(data_dir):
    data = load_dataset("mnist", data_dir, train_size=200, test_size=300)
    metrics = _fit(data)
    assert metrics[["train_reconstruction", "train_kl"]].notna().all().all()


@pytest.mark.parametrize("options", [dict(objective="iwae", num_particles=3), dict(objective="elbo", beta=2.0, kl_warmup=2)])
def test_resume_reproduces_an_uninterrupted_run(tiny_mnist, tmp_path, options):
    """The vectorized objectives' plate guess draws nothing, and warm-up resumes at the saved epoch."""

    def run(epochs, run_dir, resume=False):
        pyro.set_rng_seed(0)
        model = VAE(VAEConfig(x_dim=tiny_mnist.x_dim, z_dim=5, hidden_dims=(32,)))
        config = TrainConfig(batch_size=100, eval_batch_size=150, device="cpu", epochs=epochs, **options)
        return fit(model, tiny_mnist, config, run_dir, resume=resume)

    straight = run(2, tmp_path / "straight")
    run(1, tmp_path / "split")
    resumed = run(2, tmp_path / "split", resume=True)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"))
