"""Exact-answer tests for pplvae.objectives (issue 5).

Every test seeds torch itself. "Same draw" comparisons reseed before each
call: all objectives run the guide first, so the same seed gives the same
z ~ q(z|x), and the identities hold to float32 rounding (rtol 1e-5).
Expectations are compared within 4 Monte Carlo standard errors (a false
failure rate of about 6e-5 per assertion for a Gaussian mean).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pplvae import VAE, VAEConfig
from pplvae.objectives import (
    IWAE_ELBO,
    MMD_VAE,
    BetaTrace_ELBO,
    BetaTraceMeanField_ELBO,
    kernel_matrix,
    kl_warmup_weight,
    make_objective,
    mmd,
    scale_latents,
)

RTOL = 1e-5


@pytest.fixture(autouse=True)
def _pyro_state():
    # tests/conftest.py resets the param store, seeds and turns validation on;
    # the tensors here are tiny: on a shared 2-core machine thread hand-off costs
    # more than the arithmetic (a 4x slow-down measured with 2 threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pyro.settings.context(module_local_params=True):
        yield
    torch.set_num_threads(threads)


def make_vae_and_data(seed=0, n=16, x_dim=6):
    """An untrained VAE (Bernoulli decoder, N(0, I) prior, z_dim 2) on binary data."""
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(x_dim=x_dim, z_dim=2, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((n, x_dim), 0.3))
    return vae, x


def reconstruction_and_kl_by_hand(vae, x, seed):
    """log p(x|z) summed over the batch at the guide's draw, and the closed-form
    KL(N(mu, sigma^2) || N(0, 1)) = 0.5 sum(sigma^2 + mu^2 - 1 - log sigma^2)."""
    torch.manual_seed(seed)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    recon = vae.decoder(z).log_prob(x).sum()
    z_loc, z_scale = vae.encode(x)
    kl = 0.5 * (z_scale**2 + z_loc**2 - 1 - 2 * z_scale.log()).sum()
    return recon, kl


def loss_at(objective, vae, x, seed):
    torch.manual_seed(seed)
    return objective.differentiable_loss(vae.model, vae.guide, x)


# ---------------------------------------------------------------- beta-VAE


@pytest.mark.parametrize(
    "ours, pyros", [(BetaTrace_ELBO, Trace_ELBO), (BetaTraceMeanField_ELBO, TraceMeanField_ELBO)]
)
def test_beta_one_is_pyro_elbo(ours, pyros):
    vae, x = make_vae_and_data()
    expected = loss_at(pyros(), vae, x, seed=1)
    for objective in (ours(beta=1.0), make_objective(ours is BetaTrace_ELBO and "elbo" or "elbo-analytic")):
        assert torch.allclose(loss_at(objective, vae, x, seed=1), expected, rtol=RTOL)


@pytest.mark.parametrize("name", ["elbo", "elbo-analytic"])
def test_beta_zero_is_reconstruction(name):
    vae, x = make_vae_and_data()
    recon, _ = reconstruction_and_kl_by_hand(vae, x, seed=2)
    loss = loss_at(make_objective(name, beta=0.0), vae, x, seed=2)
    assert torch.allclose(loss, -recon, rtol=RTOL)


@pytest.mark.parametrize("beta", [0.25, 4.0])
def test_beta_scales_the_closed_form_kl(beta):
    vae, x = make_vae_and_data()
    recon, kl = reconstruction_and_kl_by_hand(vae, x, seed=3)
    loss = loss_at(make_objective("elbo-analytic", beta=beta), vae, x, seed=3)
    assert torch.allclose(loss, -(recon - beta * kl), rtol=RTOL)
    torch.manual_seed(3)
    terms = make_objective("elbo-analytic", beta=beta).loss_terms(vae.model, vae.guide, x)
    assert torch.allclose(terms["reconstruction"], recon, rtol=RTOL)
    assert torch.allclose(terms["kl"], kl, rtol=RTOL)


def test_beta_is_mutable_for_warmup():
    vae, x = make_vae_and_data()
    objective = make_objective("elbo-analytic", beta=1.0)
    objective.beta = 0.0
    recon, _ = reconstruction_and_kl_by_hand(vae, x, seed=4)
    assert torch.allclose(loss_at(objective, vae, x, seed=4), -recon, rtol=RTOL)
    with pytest.raises(ValueError):
        objective.beta = -1.0


def test_beta_scales_every_latent_of_a_hierarchical_model():
    """Two latents z1 -> z2 -> x: beta = 0 leaves log p(x|z1, z2) alone."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(0.3 * x, 0.8))
            pyro.sample("z2", dist.Normal(0.6 * x, 0.7))

    x = torch.linspace(-1, 1, 5)
    torch.manual_seed(5)
    tr = poutine.trace(guide).get_trace(x)
    recon = dist.Normal(tr.nodes["z2"]["value"], 0.5).log_prob(x).sum()
    torch.manual_seed(5)
    loss = make_objective("elbo", beta=0.0).differentiable_loss(model, guide, x)
    assert torch.allclose(loss, -recon, rtol=RTOL)


def test_scale_latents_leaves_observed_sites():
    vae, x = make_vae_and_data()
    tr = poutine.trace(scale_latents(vae.model, 0.5)).get_trace(x)
    assert tr.nodes["z"]["scale"] == 0.5 and tr.nodes["x"]["scale"] == 1.0
    with pytest.raises(ValueError):
        scale_latents(vae.model, -0.5)


# ---------------------------------------------------------------- analytic KL


def repeated_estimates(objective, vae, x, draws, copies=50):
    """``draws`` independent estimates of the batch-summed loss on ``x``; each
    call scores ``copies`` copies of ``x`` in one batch (rows of the data
    plate are independent), then sums the copies of each row."""
    x_rep = x.repeat(copies, 1)  # (copies * N, x_dim)
    with torch.no_grad():
        calls = [objective.differentiable_loss(vae.model, vae.guide, x_rep) for _ in range(draws // copies)]
    return torch.stack(calls) / copies  # each is a mean of `copies` estimates


def test_analytic_and_sampled_kl_agree_in_expectation():
    vae, x = make_vae_and_data(n=8)
    copies, calls = 50, 40
    s = repeated_estimates(BetaTrace_ELBO(), vae, x, copies * calls, copies)  # (calls,)
    a = repeated_estimates(BetaTraceMeanField_ELBO(), vae, x, copies * calls, copies)
    se = math.sqrt((s.var() + a.var()).item() / calls)
    assert abs(s.mean() - a.mean()).item() < 4 * se
    # the point of the analytic KL: no Monte Carlo noise from the KL term
    assert a.var() < s.var()


# ---------------------------------------------------------------- IWAE


@pytest.mark.parametrize("vectorize", [True, False])
def test_iwae_one_particle_is_elbo(vectorize):
    vae, x = make_vae_and_data()
    expected = loss_at(Trace_ELBO(), vae, x, seed=6)
    loss = loss_at(IWAE_ELBO(num_particles=1, vectorize_particles=vectorize, max_plate_nesting=1), vae, x, seed=6)
    assert torch.allclose(loss, expected, rtol=RTOL)


def test_iwae_value_is_pyro_renyi_alpha_zero():
    vae, x = make_vae_and_data()
    ours = loss_at(IWAE_ELBO(num_particles=5, max_plate_nesting=1), vae, x, seed=7)
    torch.manual_seed(7)
    pyros = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, vae.guide, x)
    assert math.isclose(ours.item(), pyros, rel_tol=RTOL)


def test_iwae_bound_grows_with_k_on_average():
    """Burda et al. (2016) Thm 1: E L_1 <= E L_5 <= E L_25 (<= log p(x))."""
    vae, x = make_vae_and_data(n=8)
    copies, calls = 20, 30
    means, ses = [], []
    for k in (1, 5, 25):
        bounds = -repeated_estimates(IWAE_ELBO(num_particles=k), vae, x, copies * calls, copies)  # (calls,)
        means.append(bounds.mean().item())
        ses.append(bounds.std().item() / math.sqrt(calls))
    for i in range(2):
        # strictly larger, not just "not smaller": the untrained guide is far from the posterior
        assert means[i + 1] - means[i] > 4 * math.hypot(ses[i], ses[i + 1])


def test_iwae_rejects_beta():
    with pytest.raises(ValueError):
        make_objective("iwae", num_particles=5, beta=4.0)
    objective = make_objective("iwae", num_particles=5)
    objective.beta = 1.0  # a warm-up at its target is a no-op
    with pytest.raises(ValueError):
        objective.beta = 0.5


# ---------------------------------------------------------------- MMD


def gaussian_kernel_mean(mu_a, var_a, mu_b, var_b, s):
    """E k(X, Y) for independent X ~ N(mu_a, var_a I), Y ~ N(mu_b, var_b I) under
    k = exp(-||x - y||^2 / (2 s^2)): X - Y ~ N(mu_a - mu_b, (var_a + var_b) I)."""
    d = mu_a.numel()
    v = s**2 + var_a + var_b
    return (s**2 / v) ** (d / 2) * math.exp(-((mu_a - mu_b) ** 2).sum().item() / (2 * v))


def test_kernel_values():
    s = 1.5
    a, b = torch.zeros(1, 2), torch.tensor([[math.sqrt(2) * s, 0.0]])  # ||a - b||^2 = 2 s^2
    assert math.isclose(kernel_matrix(a, b, "gaussian", s).item(), math.exp(-1), rel_tol=1e-6)
    assert math.isclose(kernel_matrix(a, b, "imq", s).item(), 0.5, rel_tol=1e-6)
    with pytest.raises(ValueError):
        kernel_matrix(a, b, "laplace")


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
def test_mmd_of_one_distribution_is_zero(kernel):
    g = torch.Generator().manual_seed(8)
    estimates = torch.stack([mmd(torch.randn(300, 3, generator=g), torch.randn(300, 3, generator=g), kernel) for _ in range(30)])
    se = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item()) < 4 * se
    assert estimates.abs().max() < 0.02  # each single estimate is small too


def test_mmd_matches_closed_form_between_gaussians():
    g = torch.Generator().manual_seed(9)
    d, s = 3, 1.3
    mu1, mu2 = torch.zeros(d), torch.tensor([0.5, -0.5, 0.25])
    sd1, sd2 = 1.0, 0.7
    exact = (
        gaussian_kernel_mean(mu1, sd1**2, mu1, sd1**2, s)
        + gaussian_kernel_mean(mu2, sd2**2, mu2, sd2**2, s)
        - 2 * gaussian_kernel_mean(mu1, sd1**2, mu2, sd2**2, s)
    )
    estimates = torch.stack(
        [mmd(mu1 + sd1 * torch.randn(400, d, generator=g), mu2 + sd2 * torch.randn(400, d, generator=g), bandwidth=s) for _ in range(30)]
    )
    se = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * se
    assert exact > 10 * se  # the test can tell these Gaussians apart


def test_biased_mmd_is_nonnegative_and_gradients_are_finite():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(50, 2, generator=g, requires_grad=True)
    y = x.detach().clone()  # zero distances everywhere on the diagonal
    value = mmd(x, y, unbiased=False)
    assert value.item() >= -1e-6
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_mmd_vae_weight_zero_is_reconstruction():
    vae, x = make_vae_and_data()
    recon, _ = reconstruction_and_kl_by_hand(vae, x, seed=11)
    loss = loss_at(MMD_VAE(mmd_weight=0.0), vae, x, seed=11)
    assert torch.allclose(loss, -recon, rtol=RTOL)


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
def test_mmd_vae_latent_term_is_minibatch_mmd(kernel):
    """N * MMD^2 between the guide's codes and a prior sample of the same size."""
    vae, x = make_vae_and_data()
    torch.manual_seed(12)
    z_q = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    poutine.trace(poutine.replay(vae.model, trace=poutine.trace(lambda x: None).get_trace(x))).get_trace(x)
    torch.manual_seed(12)
    poutine.trace(vae.guide).get_trace(x)
    z_p = poutine.trace(vae.model).get_trace(x).nodes["z"]["value"]
    expected = x.shape[0] * mmd(z_q, z_p, kernel)
    objective = make_objective("mmd", mmd_weight=10.0, kernel=kernel)
    torch.manual_seed(12)
    terms = objective.loss_terms(vae.model, vae.guide, x)
    assert torch.allclose(terms["mmd"], expected, rtol=RTOL)
    assert torch.allclose(terms["total"], terms["reconstruction"] - 10.0 * terms["mmd"], rtol=RTOL)


# ---------------------------------------------------------------- shared contract


@pytest.mark.parametrize(
    "name, options",
    [("elbo", {"beta": 2.0}), ("elbo-analytic", {"beta": 0.5}), ("iwae", {"num_particles": 4}), ("mmd", {"mmd_weight": 100.0})],
)
def test_loss_terms_total_is_minus_the_loss(name, options):
    vae, x = make_vae_and_data()
    objective = make_objective(name, **options)
    torch.manual_seed(13)
    terms = objective.loss_terms(vae.model, vae.guide, x)
    loss = loss_at(objective, vae, x, seed=13)
    assert set(terms) == {"reconstruction", "kl", "total"} | ({"mmd"} if name == "mmd" else set())
    # loss_terms sums the reconstruction and KL terms apart, without autograd:
    # equal up to float rounding of the terms, which the total (a difference
    # of terms of hundreds of nats) does not shrink.
    scale = max(abs(terms["reconstruction"].item()), abs(terms["kl"].item()))
    assert torch.allclose(terms["total"], -loss, rtol=RTOL, atol=RTOL * scale)
    assert not any(t.requires_grad for t in terms.values())


@pytest.mark.parametrize("name", ["elbo", "elbo-analytic", "iwae", "mmd"])
def test_training_steps_lower_the_loss(name):
    """A plain torch.optim loop on differentiable_loss, as the trainer runs it."""
    vae, x = make_vae_and_data(n=64)
    objective = make_objective(name, num_particles=3 if name == "iwae" else 1, mmd_weight=10.0)
    optim = torch.optim.Adam(vae.parameters(), lr=0.02)

    def mean_loss(draws=20):
        with torch.no_grad():
            return sum(objective.differentiable_loss(vae.model, vae.guide, x) for _ in range(draws)) / draws

    before = mean_loss()
    for _ in range(60):
        optim.zero_grad()
        objective.differentiable_loss(vae.model, vae.guide, x).backward()
        optim.step()
    assert mean_loss() < before


@pytest.mark.parametrize("name", ["elbo-analytic", "iwae", "mmd"])
def test_usable_as_svi_loss(name):
    """The classic route: parameters in Pyro's global store, SVI and pyro.optim."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.1))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x, scale))

    x = torch.linspace(-2.0, 2.0, 32)
    with pyro.settings.context(module_local_params=False):
        objective = make_objective(name, num_particles=2 if name == "iwae" else 1, mmd_weight=10.0)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=objective)
        losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    # the exact posterior mean is x / 2: every objective pulls a from 0.1 towards it
    assert pyro.param("a").item() > 0.1


def test_make_objective_rejects_bad_options():
    with pytest.raises(ValueError):
        make_objective("elbow")
    with pytest.raises(ValueError):
        make_objective("mmd", num_particles=3)
    with pytest.raises(ValueError):
        make_objective("mmd", beta=4.0)
    with pytest.raises(ValueError):
        make_objective("elbo", num_particles=0)
    with pytest.raises(ValueError):
        make_objective("mmd", kernel="laplace")


def test_kl_warmup_weight():
    assert [kl_warmup_weight(t, warmup=10, target=4.0) for t in (0, 2.5, 10, 30)] == [0.0, 1.0, 4.0, 4.0]
    assert kl_warmup_weight(0, warmup=0, target=4.0) == 4.0
    with pytest.raises(ValueError):
        kl_warmup_weight(-1, warmup=10)
