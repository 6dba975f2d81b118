"""Tests of the VampPrior and IAF-guide VAEs: densities against direct computations, training, saving.

Both models change one distribution of the VAE, so each has a check that the
changed distribution scores what its definition says, and a check that
importance sampling of log p(x) through the new code agrees with an estimate
that does not use it. Small untrained networks, float32, seeds fixed
(conftest seeds 0); tolerances stated per test.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from benchmarks import bdmc_bracket, priors_guides

from pplvae import (IAFConfig, IAFVAE, VAE, TrainConfig, VAEConfig, VampPriorConfig, VampPriorVAE, build_model, fit,
                    load_dataset, log_marginal_likelihood)
from pplvae.active_units import active_units

X_DIM, Z_DIM = 16, 3


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((6, X_DIM), 0.3))


def small(config_class, **extra):
    return config_class(x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=(12,), **extra)


def test_vampprior_scores_the_mean_of_the_guide_at_the_pseudo_inputs():
    """log p(z) = logsumexp_k log q(z | u_k) - log K, with q(. | u_k) the encoder's Gaussian at hardtanh(w_k); 1e-5 nats."""
    vamp = VampPriorVAE(small(VampPriorConfig, num_pseudo_inputs=5))
    z = torch.randn(7, Z_DIM)
    loc, scale = vamp.encoder(vamp.pseudo_inputs.clamp(0, 1))  # (K, Z)
    by_component = dist.Normal(loc, scale).log_prob(z.unsqueeze(1)).sum(-1)  # (7, K)
    expected = torch.logsumexp(by_component, dim=1) - math.log(5)
    torch.testing.assert_close(vamp.prior().log_prob(z), expected, rtol=0, atol=1e-5)
    trace = poutine.trace(poutine.condition(vamp.model, data={"z": z})).get_trace(torch.zeros(7, X_DIM))
    torch.testing.assert_close(trace.nodes["z"]["fn"].log_prob(z), expected, rtol=0, atol=1e-5)
    assert vamp.sample_images(4).shape == (4, X_DIM)


def test_vampprior_log_px_agrees_with_sampling_from_the_prior(x):
    """IS through the guide (K = 4000) and through the prior itself (K = 40000, log mean_k p(x | z_k), z_k ~ p(z))
    estimate the same log p(x); they agree within 0.05 nats per image (untrained: the guide is close to the prior)."""
    vamp = VampPriorVAE(small(VampPriorConfig, num_pseudo_inputs=5))
    through_guide = log_marginal_likelihood(vamp.model, vamp.guide, x, num_samples=4000).log_px
    with torch.no_grad():
        z = vamp.prior().sample((40_000,))  # (K, Z)
        log_lik = vamp.decoder(z.unsqueeze(1)).log_prob(x)  # (K, N)
    through_prior = (torch.logsumexp(log_lik.double(), dim=0) - math.log(40_000))
    torch.testing.assert_close(through_guide, through_prior, rtol=0, atol=0.05)


def test_iaf_guide_scores_its_draws_by_the_change_of_variables():
    """log q(z) of a draw (cached inverse) = the same without the cache (the flows inverted) = base density at
    the inverted point minus the log-determinants, to 1e-4 nats."""
    iaf = IAFVAE(small(IAFConfig, num_flows=2, flow_hidden_dims=(10,)))
    for flow in iaf.flows:  # move the flows away from their near-identity start
        torch.nn.init.normal_(flow.arn.layers[-1].weight, std=0.5)
    x = torch.bernoulli(torch.full((5, X_DIM), 0.5))
    trace = poutine.trace(iaf.guide).get_trace(x)
    fn, z = trace.nodes["z"]["fn"], trace.nodes["z"]["value"]
    cached = fn.log_prob(z)
    uncached = fn.log_prob(z.clone())
    base, log_det, y = fn.base_dist, 0.0, z.clone()
    for flow in reversed(list(iaf.flows)):
        previous = flow.inv(y)
        log_det = log_det + flow.log_abs_det_jacobian(previous, y)
        y = previous
    torch.testing.assert_close(uncached, cached, rtol=0, atol=1e-4)
    torch.testing.assert_close(base.log_prob(y) - log_det, cached, rtol=0, atol=1e-4)
    assert cached.shape == (5,)


def test_iaf_log_px_agrees_with_the_vae_guide_on_the_same_model(x):
    """The IAF model is the VAE's: log p̂(x) through either guide, K = 4000, agrees within 0.05 nats per image.

    The encoder's output layer is zeroed so that both guides start at the prior N(0, I) (the flows then
    move the IAF guide a little): an untrained encoder's random guide leaves an ESS of ~100 and 0.2 nats of noise.
    """
    iaf = IAFVAE(small(IAFConfig))
    torch.nn.init.zeros_(iaf.encoder.loc_scale.weight)
    torch.nn.init.zeros_(iaf.encoder.loc_scale.bias)
    vae = VAE(small(VAEConfig))
    vae.load_state_dict({k: v for k, v in iaf.state_dict().items() if not k.startswith("flows.")})
    through_flow = log_marginal_likelihood(iaf.model, iaf.guide, x, num_samples=4000).log_px
    through_gaussian = log_marginal_likelihood(vae.model, vae.guide, x, num_samples=4000).log_px
    torch.testing.assert_close(through_flow, through_gaussian, rtol=0, atol=0.05)


@pytest.mark.parametrize("name, new_parameter", [("vampprior", "pseudo_inputs"), ("iaf", "flows")])
def test_new_parameters_train_and_round_trip(x, name, new_parameter):
    model = build_model(name, x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=[12])
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(new_parameter)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    again = build_model(name, x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=[12])
    again.load_state_dict(model.state_dict())  # the flows' orderings are buffers
    pyro.set_rng_seed(3)
    first = log_marginal_likelihood(model.model, model.guide, x, num_samples=20).log_px
    pyro.set_rng_seed(3)
    second = log_marginal_likelihood(again.model, again.guide, x, num_samples=20).log_px
    torch.testing.assert_close(first, second)
    assert model.reconstruct(x).shape == x.shape and model.sample_images(3).shape == (3, X_DIM)
    assert set(active_units(model.guide, x, num_samples=2)) == {"z"}


def test_vampprior_leaves_the_collapse_plateau_on_real_mnist(data_dir):
    """Two epochs of fit on 4,000 real images: the test ELBO beats every model whose guide ignores x.

    When q(z | x) = q(z) for all x, the summed ELBO of the test images is at most max_z sum_x log p(x | z),
    and since p(x | z) has independent pixels, at most the log-likelihood of the best independent-pixel
    Bernoulli model: each pixel at its mean m_d over the test images, sum_d m_d log m_d + (1 - m_d) log(1 - m_d)
    per image. A collapsed VampPrior (q(z | x) and the prior moving together, no active unit) sits below that
    bound; a working one passes it and has active units.
    """
    data = load_dataset("mnist", data_dir, train_size=4000, test_size=200)
    x_test = data.x_test.float()
    m = x_test.mean(0)
    independent_pixels = (torch.special.xlogy(m, m) + torch.special.xlogy(1 - m, 1 - m)).sum().item()
    pyro.set_rng_seed(0)
    vamp = build_model("vampprior", x_dim=data.x_dim)
    metrics = fit(vamp, data, TrainConfig(epochs=2, device="cpu"))
    assert metrics["test_elbo"].iloc[-1] > independent_pixels
    assert active_units(vamp.guide, x_test)["z"] > 0


def test_configs_reject_bad_sizes():
    with pytest.raises(ValueError, match="num_pseudo_inputs"):
        small(VampPriorConfig, num_pseudo_inputs=0)
    with pytest.raises(ValueError, match="num_flows"):
        small(IAFConfig, num_flows=0)


def test_benchmark_scripts_run_on_small_runs(tmp_path, data_dir):
    """benchmarks/priors_guides.py and benchmarks/bdmc_bracket.py end to end on runs of 1 epoch on 200 images."""
    data = load_dataset("mnist", data_dir, train_size=200, test_size=20)
    runs = []
    for name in ("vampprior", "iaf"):
        model = build_model(name, x_dim=data.x_dim, z_dim=4, hidden_dims=[20])
        fit(model, data, TrainConfig(epochs=1, batch_size=100, device="cpu"), tmp_path / name)
        runs.append(str(tmp_path / name))
    table = priors_guides.main([*runs, "--data-dir", str(data_dir), "--num-images", "10", "--num-samples", "20",
                                "--au-samples", "3"])
    assert list(table["model"]) == ["vampprior", "iaf"]
    assert (table["elbo"] <= table["log_px"]).all() and (table["active_units"] <= 4).all()
    bracket = bdmc_bracket.main([runs[0], "--num-images", "5", "--steps", "2", "4", "--num-chains", "2",
                                 "--is-samples", "10"])
    assert list(bracket["num_steps"]) == [2, 4]
    assert ((bracket["upper"] - bracket["lower"] - bracket["width"]).abs() < 1e-4).all()  # nats per image
    assert (bracket["is_log_px"] < 0).all()
