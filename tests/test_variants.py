"""The variants as edits of the VAE: the class-conditional VAE, the two-layer VAE, and Sohn et al.'s quadrant
CVAE and its baseline, whose models are a user's pairs written in ``examples/cvae_quadrants.py`` (loaded with
``runpy``).

Real-data tests use the first images of MNIST (conftest's ``data_dir``: skipped
when it is missing, failed under CI). Log-likelihoods are estimated by the
generic estimator :func:`pplvae.log_marginal_likelihood`, unchanged for every variant.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from torch.nn import functional as F

from pplvae import CVAE, HVAE, CVAEConfig, HVAEConfig, TrainConfig, fit, load_dataset, log_marginal_likelihood
from pplvae.active_units import active_units, latent_mean_variances
from pplvae.cli import main as cli_main
from pplvae.models import build_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cvae_quadrants.py"
_example = runpy.run_path(str(EXAMPLE))
QuadrantBaseline, QuadrantConfig, QuadrantCVAE = (_example[n] for n in ("QuadrantBaseline", "QuadrantConfig",
                                                                        "QuadrantCVAE"))
quadrant_mask, split_quadrants, join_quadrants = (_example[n] for n in ("quadrant_mask", "split_quadrants",
                                                                        "join_quadrants"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the networks are small, and on a shared CPU thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist(data_dir):
    """The first 3000 training and 500 test images of binarized MNIST (conftest's ``data_dir``)."""
    return load_dataset("mnist", data_dir, train_size=3000, test_size=500)


def sample_shapes(model, *args) -> dict[str, tuple[int, ...]]:
    """Shapes of the model's sample sites, replayed against the guide."""
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    return {name: tuple(site["value"].shape) for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and name != "data"}


# The math of each model, as sites and shapes for N = 4 images of 784 pixels.
SITES = {
    "cvae": {"z": (4, 50), "x": (4, 784)},  # p(z) p(x | z, y)
    "hvae": {"z2": (4, 50), "z1": (4, 100), "x": (4, 784)},  # p(z2) p(z1 | z2) p(x | z1)
}


@pytest.mark.parametrize("name", sorted(SITES))
def test_trace_has_the_sites_and_shapes_of_the_math(name):
    model = build_model(name, x_dim=784)
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    args = model.batch_args(x, torch.tensor([0, 3, 7, 9]))
    assert sample_shapes(model, *args) == SITES[name]
    guide_sites = poutine.trace(model.guide).get_trace(*args).stochastic_nodes
    assert set(guide_sites) - {"data"} == set(SITES[name]) - {"x", "y"}  # the guide samples the latents only


def test_cvae_takes_one_hot_labels_and_rejects_missing_ones():
    cvae = CVAE(CVAEConfig(x_dim=6, z_dim=2, hidden_dims=(5,), num_classes=3))
    x, y = cvae.batch_args(torch.ones(2, 6), torch.tensor([2, 0]))
    assert torch.equal(y, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="needs labels"):
        cvae.batch_args(x, None)
    with pytest.raises(ValueError, match="one-hot labels"):
        cvae.model(x, y[:, :2])
    with pytest.raises(ValueError, match="labels must lie"):
        cvae.one_hot(torch.tensor([3]))


def test_class_grid_holds_z_down_a_column():
    cvae = CVAE(CVAEConfig(x_dim=6, z_dim=2, hidden_dims=(5,), num_classes=3))
    grid = cvae.sample_class_grid(4)  # (3 classes * 4 styles, 6)
    assert grid.shape == (12, 6)
    # With a decoder that ignores y every row is the same: the columns differ only by z.
    torch.nn.init.zeros_(cvae.decoder.body[0].weight[:, 2:])
    grid = cvae.sample_class_grid(4).reshape(3, 4, 6)
    assert torch.allclose(grid[0], grid[1]) and torch.allclose(grid[0], grid[2])
    assert not torch.allclose(grid[0, 0], grid[0, 1])


def test_active_units_count_the_units_whose_mean_moves_with_x():
    hvae = HVAE(HVAEConfig(x_dim=12, z_dim=3, hidden_dims=(6,), z1_dim=4, top_hidden_dims=(5,)))
    x = torch.bernoulli(torch.full((50, 12), 0.5))
    variances = latent_mean_variances(hvae.guide, x, num_samples=3, batch_size=20)
    assert {name: v.shape for name, v in variances.items()} == {"z1": (4,), "z2": (3,)}
    # q(z1 | x) ignores x: no active unit in z1; its mean is exact, so the variance is 0 with any samples.
    torch.nn.init.zeros_(hvae.encoder_z1.loc_scale.weight)
    counts = active_units(hvae.guide, x, num_samples=3)
    assert counts["z1"] == 0 and latent_mean_variances(hvae.guide, x)["z1"].abs().max() < 1e-12
    x[7, 0] = float("nan")
    with pytest.raises(ValueError, match=r"argument 0 holds NaN or infinite values in 1 row\(s\): \[7\]"):
        active_units(hvae.guide, x)


@pytest.mark.parametrize("name", sorted(SITES))
def test_generic_estimator_gives_finite_per_datapoint_estimates(name):
    model = build_model(name, x_dim=784, hidden_dims=(32,), z_dim=5)
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    args = model.batch_args(x, torch.arange(6))
    estimate = log_marginal_likelihood(model.model, model.guide, *args, num_samples=8)
    assert estimate.log_px.shape == (6,) and torch.isfinite(estimate.log_px).all()
    assert (estimate.log_px < 0).all()  # log-probabilities of binary pixels


@pytest.fixture(scope="module")
def trained_cvae(mnist):
    pyro.set_rng_seed(0)
    # A 2-D z leaves the class to y, so that a short run already uses it (about 78% below, seed 0).
    cvae = CVAE(CVAEConfig(x_dim=mnist.x_dim, z_dim=2, hidden_dims=(200,)))
    fit(cvae, mnist, TrainConfig(epochs=5, batch_size=50, learning_rate=3e-3, device="cpu"))
    return cvae.eval()


def test_class_conditional_samples_change_class_with_y(trained_cvae, mnist):
    """Samples for y = c are nearest to the mean of real digits c (nearest class mean, real data)."""
    class_means = torch.stack([mnist.x_train[mnist.y_train == c].mean(0) for c in range(10)])  # (10, 784)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        grid = trained_cvae.sample_class_grid(20)  # (10 classes * 20 styles, 784), z shared down columns
    predicted = torch.cdist(grid, class_means).argmin(dim=1)
    wanted = torch.arange(10).repeat_interleave(20)
    accuracy = (predicted == wanted).float().mean().item()
    assert accuracy > 0.5, f"only {accuracy:.0%} of the samples look like their class (chance: 10%)"


def test_class_conditional_bounds_are_ordered(trained_cvae, mnist):
    args = trained_cvae.batch_args(mnist.x_test[:100], mnist.y_test[:100])
    estimate = log_marginal_likelihood(trained_cvae.model, trained_cvae.guide, *args, num_samples=200)
    elbo, iwae_50, log_px = (t.mean().item() for t in (estimate.bounds[1], estimate.bounds[50], estimate.log_px))
    assert elbo <= iwae_50 <= log_px  # log p(x | y) bounds, nats per image


# The math of each model, as sites and shapes for N = 4 images of 784 pixels, 3 observed quadrants.
QUADRANT_SITES = {
    "baseline": {"y": (4, 196)},  # p(y | x), y = the unobserved quadrant
    "cvae": {"z": (4, 200), "y": (4, 196)},  # p(z | x) p(y | x, z)
}


@pytest.mark.parametrize("name", sorted(QUADRANT_SITES))
def test_quadrant_trace_has_the_sites_and_shapes_of_the_math(name):
    config = QuadrantConfig(x_dim=784, observed_quadrants=3)
    model = (QuadrantBaseline if name == "baseline" else QuadrantCVAE)(config)
    args = model.batch_args(torch.bernoulli(torch.full((4, 784), 0.3)))
    assert [tuple(a.shape) for a in args] == [(4, 588), (4, 196)]
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    shapes = {n: tuple(site["value"].shape) for n, site in model_trace.nodes.items()
              if site["type"] == "sample" and n != "data"}
    assert shapes == QUADRANT_SITES[name]
    assert set(guide_trace.stochastic_nodes) - {"data"} == set(QUADRANT_SITES[name]) - {"y"}  # the guide samples z only


def test_quadrant_masks_split_and_join():
    for n, observed in ((1, 196), (2, 392), (3, 588)):
        mask = quadrant_mask((28, 28), n)
        assert int(mask.sum()) == observed
    image = quadrant_mask((4, 4), 1).reshape(4, 4)
    assert image[2:, :2].all() and not image[:2].any() and not image[:, 2:].any()  # bottom left
    x = torch.rand(3, 16)
    mask = quadrant_mask((4, 4), 3)
    assert torch.equal(join_quadrants(*split_quadrants(x, mask), mask), x)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        quadrant_mask((28, 28), 4)


def test_cvae_initialised_from_the_baseline_predicts_as_the_baseline_for_every_z():
    config = QuadrantConfig(x_dim=64, observed_quadrants=2, z_dim=3, hidden_dims=(8, 8))
    baseline = QuadrantBaseline(config)
    cvae = QuadrantCVAE(config).init_from_baseline(baseline)
    x, _ = baseline.batch_args(torch.bernoulli(torch.full((5, 64), 0.5)))
    y_mean = cvae.predict(x, num_samples=7)  # (7, 5, 32), seven draws of z ~ p(z | x)
    assert torch.allclose(y_mean, baseline.predict(x).expand(7, 5, 32), atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        cvae.init_from_baseline(QuadrantBaseline(QuadrantConfig(x_dim=64, observed_quadrants=1, hidden_dims=(8, 8))))


def test_baseline_elbo_is_its_exact_bernoulli_log_likelihood():
    baseline = QuadrantBaseline(QuadrantConfig(x_dim=64, observed_quadrants=1, hidden_dims=(8,)))
    x, y = baseline.batch_args(torch.bernoulli(torch.full((5, 64), 0.5)))
    logits = baseline.net.logits(baseline.net.body(x))
    exact = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")  # -log p(y | x), summed
    loss = pyro.infer.Trace_ELBO().loss(baseline.model, baseline.guide, x, y)
    assert loss == pytest.approx(exact.item(), rel=1e-6)


@pytest.fixture(scope="module")
def quadrant_pair(mnist):
    """A baseline and a CVAE started from it, 3 epochs each on 3000 images, 2 observed quadrants."""
    config = QuadrantConfig(x_dim=mnist.x_dim, observed_quadrants=2, z_dim=20, hidden_dims=(200,))
    train = TrainConfig(epochs=3, batch_size=100, device="cpu")
    pyro.set_rng_seed(0)
    baseline = QuadrantBaseline(config)
    fit(baseline, mnist, train)
    cvae = QuadrantCVAE(config).init_from_baseline(baseline)
    fit(cvae, mnist, train)
    return baseline.eval(), cvae.eval()


def test_quadrant_cvae_beats_its_baseline_on_the_test_set(quadrant_pair, mnist):
    """-ELBO of the CVAE (an upper bound on its -log p(y | x)) is below the baseline's exact -log p(y | x)."""
    baseline, cvae = quadrant_pair
    args = cvae.batch_args(mnist.x_test)
    elbo = pyro.infer.Trace_ELBO(num_particles=10, vectorize_particles=True)
    with torch.no_grad():
        baseline_nll = elbo.loss(baseline.model, baseline.guide, *args) / len(mnist.x_test)
        cvae_neg_elbo = elbo.loss(cvae.model, cvae.guide, *args) / len(mnist.x_test)
    assert cvae_neg_elbo < baseline_nll - 1.0, (cvae_neg_elbo, baseline_nll)


def test_quadrant_conditional_log_likelihood_bounds_are_ordered(quadrant_pair, mnist):
    baseline, cvae = quadrant_pair
    args = cvae.batch_args(mnist.x_test[:100])
    estimate = log_marginal_likelihood(cvae.model, cvae.guide, *args, num_samples=200)
    elbo, iwae_50, log_px = (t.mean().item() for t in (estimate.bounds[1], estimate.bounds[50], estimate.log_px))
    assert elbo <= iwae_50 <= log_px  # log p(y | x) bounds, nats per image
    exact = log_marginal_likelihood(baseline.model, baseline.guide, *args, num_samples=3)
    assert torch.allclose(exact.log_px, exact.bounds[1], rtol=1e-6)  # no latent: every weight is p(y | x)


@pytest.mark.parametrize("name", ["cvae", "hvae"])
def test_command_line_trains_each_variant_on_mnist(name, data_dir, tmp_path, capsys):
    out = tmp_path / name
    status = cli_main(["train", "--model", name, "--epochs", "1", "--train-size", "300", "--test-size", "50",
                       "--hidden-dims", "32", "--device", "cpu", "--no-progress", "--out", str(out),
                       "--data-dir", str(data_dir)])
    assert status == 0, capsys.readouterr().err
    assert (out / "checkpoint.pt").exists() and (out / "samples.png").exists()
    assert (out / "class_samples.png").exists() == (name == "cvae")


@pytest.mark.parametrize("script", ["cvae_mnist.py", "hvae_mnist.py", "cvae_quadrants.py", "conv_vae_mnist.py",
                                    "m2_semisupervised.py"])
def test_example_scripts_run(script, data_dir, tmp_path, monkeypatch, capsys):
    """Each example as ``python examples/SCRIPT`` with tiny flags, in this process (no second torch import)."""
    import sys

    flags = ["--epochs", "1", "--train-size", "300", "--test-size", "20", "--num-samples", "5", "--device", "cpu"]
    flags += ["--observed", "3"] if script == "cvae_quadrants.py" else []
    flags += ["--labels-per-class", "5"] if script == "m2_semisupervised.py" else []  # 50 labelled, 250 not
    path = Path(__file__).resolve().parents[1] / "examples" / script
    monkeypatch.setattr(sys, "argv", [str(path), *flags, "--data-dir", str(data_dir), "--out", str(tmp_path / "run")])
    namespace = runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "log_px" in out or "quadrants.csv" in out
    if script == "m2_semisupervised.py":
        assert "50 labelled and 250 unlabelled" in out and "test classification error" in out
    if script == "cvae_quadrants.py":  # Sohn et al.'s table and pictures, beside Pyro's tutorial numbers
        import pandas as pd

        table = pd.read_csv(tmp_path / "run" / "quadrants.csv")
        assert list(table["observed_quadrants"]) == [3] and table["tutorial_cvae_neg_elbo"].item() == 24.2
        assert (tmp_path / "run" / "quadrants_q3.png").exists()
        assert (tmp_path / "run" / "q3-cvae" / "checkpoint.pt").exists()
        # a run of the example's own model loads into that model, as its docstring says
        import json

        from pplvae import load_run

        saved = json.loads((tmp_path / "run" / "q3-cvae" / "config.json").read_text())["model"]
        config = namespace["QuadrantConfig"](**{k: v for k, v in saved.items() if k != "name"})
        run = load_run(tmp_path / "run" / "q3-cvae", device="cpu", model=namespace["QuadrantCVAE"](config))
        assert run.model.target_dim == 196 and run.config["model"]["name"] == "quadrant-cvae"
