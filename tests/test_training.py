"""SVI training on real data: it learns, it reproduces, it resumes exactly, it keeps good files."""

import pandas as pd
import pyro
import pytest
import torch

from pplvae import VAE, TrainConfig, VAEConfig, fit, load_checkpoint, load_dataset, load_run
from pplvae.runs import save_checkpoint

SMALL = dict(z_dim=10, hidden_dims=(64,))


def _model(seed=0, x_dim=784, **sizes):
    pyro.set_rng_seed(seed)
    return VAE(VAEConfig(x_dim=x_dim, **{**SMALL, **sizes}))


@pytest.fixture(scope="module")
def small_mnist(data_dir):
    return load_dataset("mnist", data_dir, train_size=1000, test_size=500)


@pytest.mark.slow
def test_short_training_run_improves_the_test_elbo(data_dir):
    """5,000 images for 3 epochs lift the test ELBO from about -545 by more than 300 nats."""
    data = load_dataset("mnist", data_dir, train_size=5000, test_size=1000)
    model = _model()
    with torch.no_grad():
        from pplvae.training import Trainer

        before = Trainer(model, TrainConfig(device="cpu")).evaluate(data)
    metrics = fit(model, data, TrainConfig(epochs=3, batch_size=64, device="cpu"))
    after = metrics["test_elbo"].iloc[-1]
    assert before < -500
    assert after > before + 300, (before, after)
    assert metrics["test_elbo"].is_monotonic_increasing


def test_same_seed_same_numbers(small_mnist):
    config = TrainConfig(epochs=1, batch_size=100, device="cpu", seed=3)
    first = fit(_model(), small_mnist, config)
    second = fit(_model(), small_mnist, config)
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), second.drop(columns="seconds"))


def test_resume_reproduces_an_uninterrupted_run(small_mnist, tmp_path):
    config = TrainConfig(epochs=3, batch_size=100, device="cpu")
    straight = _model()
    expected = fit(straight, small_mnist, config, tmp_path / "straight")

    fit(_model(), small_mnist, TrainConfig(epochs=1, batch_size=100, device="cpu"), tmp_path / "split")
    resumed = _model(seed=99)  # other initial weights: the checkpoint must replace them
    pyro.set_rng_seed(12345)  # and other RNG state
    got = fit(resumed, small_mnist, config, tmp_path / "split", resume=True)

    columns = ["epoch", "train_elbo", "test_elbo"]
    pd.testing.assert_frame_equal(got[columns], expected[columns])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    on_disk = pd.read_csv(tmp_path / "split" / "metrics.csv")
    assert on_disk["epoch"].tolist() == [1, 2, 3]


def test_interrupt_keeps_the_last_good_checkpoint_and_metrics(small_mnist, tmp_path):
    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), small_mnist, TrainConfig(epochs=5, batch_size=100, device="cpu"), tmp_path,
            on_epoch=interrupt)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no half-written files
    run = load_run(tmp_path, device="cpu")
    assert run.epoch == 2 and run.model.config.z_dim == SMALL["z_dim"]


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_existing_run_is_not_overwritten(small_mnist, tmp_path):
    config = TrainConfig(epochs=1, batch_size=500, device="cpu")
    fit(_model(), small_mnist, config, tmp_path)
    with pytest.raises(FileExistsError, match="resume"):
        fit(_model(), small_mnist, config, tmp_path)


def test_model_and_data_widths_must_match(small_mnist, tmp_path):
    with pytest.raises(ValueError, match="x_dim=560 but mnist images have 784"):
        fit(_model(x_dim=560), small_mnist, TrainConfig(epochs=1, device="cpu"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_training_config_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checked on the device machine)")
def test_cuda_training_step(small_mnist):
    metrics = fit(_model(), small_mnist, TrainConfig(epochs=1, batch_size=100, device="cuda"))
    assert metrics["test_elbo"].notna().all()


def test_freyface_trains_with_the_gaussian_decoder():
    frey = load_dataset("freyface")
    model = _model(x_dim=frey.x_dim, likelihood="gaussian", z_dim=5, hidden_dims=(200,))
    metrics = fit(model, frey, TrainConfig(epochs=4, batch_size=100, learning_rate=3e-3, device="cpu"))
    assert metrics["test_elbo"].iloc[-1] > metrics["test_elbo"].iloc[0]
    assert metrics["test_elbo"].notna().all()
