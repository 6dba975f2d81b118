"""The GPU code paths: training, resuming, evaluating and the estimator with ``device="cuda"``.

Skipped where torch sees no CUDA GPU (CI's machines have none); run on a GPU
machine with ``PPLVAE_DATA_DIR=... python -m pytest tests/test_cuda.py``.
"""

import math

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

from pplvae import CVAE, HVAE, VAE, CVAEConfig, HVAEConfig, TrainConfig, VAEConfig, fit, load_dataset, load_run
from pplvae import log_marginal_likelihood
from pplvae.fast_log_prob import bernoulli_log_prob
from pplvae.evaluation import evaluate_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checked on the device machine)")

SMALL = dict(z_dim=10, hidden_dims=(64,))


@pytest.fixture(scope="module")
def small_mnist(data_dir):
    return load_dataset("mnist", data_dir, train_size=1000, test_size=200)


def _vae(seed=0):
    pyro.set_rng_seed(seed)
    return VAE(VAEConfig(x_dim=784, **SMALL))


@pytest.mark.parametrize("compile", [False, True])
def test_estimator_on_cuda_gives_the_closed_form(compile):
    """z ~ N(0, 1), x | z ~ N(z, 1), guide = exact posterior N(x/2, 1/2): log p̂(x) = log N(x; 0, 2) for any K,
    also with the chunks compiled (Inductor's GPU kernels)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    x = torch.linspace(-3, 3, 50, dtype=torch.float64, device="cuda")
    result = log_marginal_likelihood(model, guide, x, num_samples=300, max_memory_bytes=20_000, compile=compile)
    assert result.log_px.device.type == "cuda" and result.chunk_shape[1] < 50  # chunked on the GPU
    exact = -0.25 * x**2 - 0.5 * math.log(4 * math.pi)  # log N(x; 0, 2) in float64
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-10)


def test_fast_bernoulli_log_prob_on_cuda():
    logits = 6 * torch.randn(100, 4, 784, dtype=torch.float64, device="cuda")
    x = (torch.rand(4, 784, device="cuda") < 0.3).double()
    expected = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), expected, rtol=0, atol=1e-10)


def test_train_resume_evaluate_on_cuda_and_load_on_cpu(small_mnist, data_dir, tmp_path):
    config = TrainConfig(epochs=2, batch_size=100, device="cuda")
    straight = _vae()
    expected = fit(straight, small_mnist, config, tmp_path / "straight")
    assert next(straight.parameters()).device.type == "cuda"
    assert expected["test_elbo"].iloc[-1] > expected["test_elbo"].iloc[0]

    fit(_vae(), small_mnist, TrainConfig(epochs=1, batch_size=100, device="cuda"), tmp_path / "split")
    resumed = _vae(seed=99)
    got = fit(resumed, small_mnist, config, tmp_path / "split", resume=True)
    columns = ["epoch", "train_elbo", "test_elbo"]
    pd.testing.assert_frame_equal(got[columns], expected[columns], rtol=1e-5)

    on_cpu = load_run(tmp_path / "straight", device="cpu")  # a GPU checkpoint opens on a CPU
    assert next(on_cpu.model.parameters()).device.type == "cpu"

    table = evaluate_run(tmp_path / "straight", num_samples=500, max_examples=100, device="cuda", data_dir=data_dir)
    row = table.iloc[0]
    assert row["elbo"] <= row["iwae_5"] <= row["iwae_50"] <= row["log_px"] < 0
    # the ELBO of the estimator's draws agrees with the training loop's test ELBO on those images
    assert abs(row["elbo"] - expected["test_elbo"].iloc[-1]) < 15


def test_estimates_on_cuda_and_cpu_agree_within_monte_carlo_error(small_mnist):
    model = _vae()
    fit(model, small_mnist, TrainConfig(epochs=1, batch_size=100, device="cpu"))
    x = small_mnist.x_test[:40]
    pyro.set_rng_seed(1)
    on_cpu = log_marginal_likelihood(model.model, model.guide, x, num_samples=1000)
    model.to("cuda")
    pyro.set_rng_seed(1)
    on_gpu = log_marginal_likelihood(model.model, model.guide, x.to("cuda"), num_samples=1000)
    diff = (on_gpu.log_px.cpu() - on_cpu.log_px)  # (40,) paired by image
    assert abs(diff.mean().item()) < max(0.05, 4 * diff.std().item() / math.sqrt(40))


@pytest.mark.parametrize("kind", ["cvae", "hvae"])
def test_variants_train_on_cuda(small_mnist, kind):
    pyro.set_rng_seed(0)
    if kind == "cvae":
        model = CVAE(CVAEConfig(x_dim=784, **SMALL))
    else:
        model = HVAE(HVAEConfig(x_dim=784, z_dim=5, hidden_dims=(64,), z1_dim=10, top_hidden_dims=(32,)))
    metrics = fit(model, small_mnist, TrainConfig(epochs=1, batch_size=100, device="cuda"))
    assert metrics["test_elbo"].notna().all()
    x, labels = small_mnist.x_test[:20].cuda(), small_mnist.y_test[:20].cuda()
    result = log_marginal_likelihood(model.model, model.guide, *model.batch_args(x, labels), num_samples=100)
    assert torch.isfinite(result.log_px).all() and result.log_px.device.type == "cuda"
