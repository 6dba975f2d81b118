"""Tests of pplvae.ais (annealed importance sampling, bidirectional Monte Carlo) against exact log p(x).

The linear-Gaussian model of test_marginal has log p(x) = log N(x; b, W W^T + s^2 I)
in closed form. Seeds fixed (conftest seeds 0, tests reseed where stated); float64;
tolerances stated per test.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_marginal import lg  # noqa: F401  (the fixture: a LinearGaussian with its exact log p(x))

from pplvae import VAE, IAFConfig, IAFVAE, VAEConfig, VampPriorConfig, VampPriorVAE
from pplvae.ais import AISResult, annealed_importance_sampling, beta_schedule, bidirectional_monte_carlo

NUM_DATA = 20


@pytest.fixture
def x(lg):  # noqa: F811
    """20 datapoints drawn from the model (fewer than test_marginal's 40: AIS costs T steps each)."""
    return lg.sample(NUM_DATA)


def test_exact_posterior_as_initial_distribution_gives_the_exact_value(lg, x):  # noqa: F811
    """With q_0 = p(z | x), log p(x, z) - log q_0(z | x) = log p(x) for every z: every weight is exact."""
    result = annealed_importance_sampling(lg.model, lg.exact_guide, x, num_steps=5, num_chains=4, num_leapfrog=2)
    assert isinstance(result, AISResult)
    assert result.log_px.shape == (NUM_DATA,) and result.log_px.dtype == torch.float64
    assert result.log_weights.shape == (4, NUM_DATA)
    torch.testing.assert_close(result.log_px, lg.exact_log_px(x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("initial, steps, tolerance", [("guide", (3, 100), 0.1), ("prior", (10, 300), 0.3)])
def test_ais_converges_to_the_exact_value_as_steps_grow(lg, x, initial, steps, tolerance):  # noqa: F811
    """Mean absolute error over 20 datapoints (16 chains): below ``tolerance`` nats at the larger T,
    and less than 1/2.5 of the error at the smaller T (measured: guide 0.23 -> 0.07, prior 4.4 -> 0.23 nats;
    16 chains leave a Monte Carlo error of a few hundredths)."""
    errors = []
    for num_steps in steps:
        pyro.set_rng_seed(0)
        result = annealed_importance_sampling(lg.model, lg.worse_guide, x, num_steps=num_steps, num_chains=16,
                                              num_leapfrog=3, initial=initial)
        errors.append((result.log_px - lg.exact_log_px(x)).abs().mean().item())
    assert errors[1] < tolerance, errors
    assert errors[1] < errors[0] / 2.5, errors
    assert 0.5 < result.acceptance.mean() < 0.95  # the step size adapts toward 0.65


def test_bdmc_brackets_the_exact_value_and_narrows_with_steps(lg):  # noqa: F811
    """On 50 datapoints simulated from the model, from the prior, 8 chains: mean lower bound <= mean exact
    log p(x) <= mean upper bound at T = 5 and T = 50, and the mean width falls by more than half
    (measured beforehand: 10.4 nats at T = 5, 4.7 at T = 30; the margins exceed 2 nats)."""
    template = torch.zeros(50, 5, dtype=torch.float64)
    widths = []
    for num_steps in (5, 50):
        pyro.set_rng_seed(1)
        bracket = bidirectional_monte_carlo(lg.model, lg.worse_guide, template, num_steps=num_steps, num_chains=8,
                                            num_leapfrog=3, initial="prior")
        exact = lg.exact_log_px(bracket.data)
        assert bracket.lower.mean() < exact.mean() < bracket.upper.mean(), num_steps
        assert bracket.data.shape == template.shape and set(bracket.latents) == {"z"}
        assert not bracket.forward.reverse and bracket.reverse.reverse
        widths.append(bracket.width.mean().item())
    assert widths[1] < widths[0] / 2, widths


def test_beta_schedules():
    for schedule in ("sigmoid", "linear"):
        betas = beta_schedule(10, schedule)
        assert betas.shape == (11,) and betas[0] == 0 and betas[-1] == 1
        assert (betas.diff() > 0).all()
    sigmoid = beta_schedule(10).diff()
    assert sigmoid[0] < sigmoid[5] and sigmoid[-1] < sigmoid[5]  # small steps at both ends
    with pytest.raises(ValueError, match="num_steps"):
        beta_schedule(0)
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule(3, "cosine")


def test_ais_rejects_what_it_cannot_move(lg, x):  # noqa: F811
    def positive_model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Normal(rate, 1.0), obs=x)

    def positive_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.Gamma(2.0, 1.0))

    with pytest.raises(ValueError, match="real-valued"):
        annealed_importance_sampling(positive_model, positive_guide, torch.ones(3), num_steps=2)
    with pytest.raises(ValueError, match="num_chains"):
        annealed_importance_sampling(lg.model, lg.worse_guide, x, num_chains=0)
    with pytest.raises(ValueError, match="initial"):
        annealed_importance_sampling(lg.model, lg.worse_guide, x, initial="posterior")
    with pytest.raises(ValueError, match="args"):
        bidirectional_monte_carlo(lg.model, lg.worse_guide, x, data_arg=1)


@pytest.mark.parametrize("estimator", [annealed_importance_sampling, bidirectional_monte_carlo])
def test_bad_data_are_named_before_any_chain_runs(lg, x, estimator):  # noqa: F811
    """Before: NaN gave torch's multi-line parameter error from inside the guide, no rows ZeroDivisionError."""
    with pytest.raises(ValueError, match="0 rows"):
        estimator(lg.model, lg.worse_guide, x[:0], num_steps=2)
    bad = x.clone()
    bad[3] = float("inf")
    with pytest.raises(ValueError, match=r"argument 0 holds NaN or infinite values in 1 row\(s\): \[3\]\."):
        estimator(lg.model, lg.worse_guide, bad, num_steps=2)


@pytest.mark.parametrize("model_class, config", [
    (VAE, VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,))),
    (VampPriorVAE, VampPriorConfig(x_dim=12, z_dim=3, hidden_dims=(8,), num_pseudo_inputs=4)),
    (IAFVAE, IAFConfig(x_dim=12, z_dim=3, hidden_dims=(8,), flow_hidden_dims=(8,))),
])
def test_ais_runs_on_the_library_models_in_chunks(model_class, config):
    """Finite per-datapoint estimates from the guide and the prior, chunk by chunk, and a BDMC bracket."""
    vae = model_class(config)
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    done = []
    for initial in ("guide", "prior"):
        result = annealed_importance_sampling(vae.model, vae.guide, x, num_steps=4, num_chains=2, batch_size=2,
                                              initial=initial, progress=done.append)
        assert result.log_px.shape == (5,) and torch.isfinite(result.log_px).all()
        assert result.log_px.max() < 0  # log-probabilities of binary data
    assert done == [2, 2, 1] * 2
    bracket = bidirectional_monte_carlo(vae.model, vae.guide, x, num_steps=4, num_chains=2)
    assert torch.isfinite(bracket.width).all()
    assert math.isfinite(result.to_frame()["log_px"].item())
