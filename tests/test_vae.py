"""The VAE's model/guide pair against the ELBO and KL computed by hand from the same tensors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from pplvae import VAE, VAEConfig


def _trace_shapes(vae, x):
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    return guide, model


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_trace_has_the_sites_of_the_math(likelihood):
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,), likelihood=likelihood))
    x = torch.rand(5, 12).round()
    guide, model = _trace_shapes(vae, x)
    assert guide.nodes["z"]["value"].shape == (5, 3)
    assert model.nodes["z"]["fn"].event_shape == (3,) and model.nodes["z"]["fn"].batch_shape == (5,)
    assert model.nodes["x"]["is_observed"] and model.nodes["x"]["fn"].event_shape == (12,)
    assert [f.name for f in model.nodes["x"]["cond_indep_stack"]] == ["data"]


def test_elbo_equals_the_elbo_computed_by_hand_with_fixed_noise(mnist):
    """ELBO = log p(x|z) + log p(z) - log q(z|x) at the same z, summed over the batch."""
    pyro.set_rng_seed(1)
    vae = VAE(VAEConfig(x_dim=784, z_dim=4, hidden_dims=(32,)))
    x = mnist.x_test[:16]
    pyro.set_rng_seed(123)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]  # the guide's draw
    pyro.set_rng_seed(123)
    elbo = -Trace_ELBO().loss(vae.model, vae.guide, x)  # the same draw: the guide runs first

    with torch.no_grad():
        h = torch.tanh(vae.encoder.body[0](x))
        z_loc, z_log_scale = vae.encoder.loc_scale(h).chunk(2, -1)
        z_scale = z_log_scale.exp()
        logits = vae.decoder.logits(torch.tanh(vae.decoder.body[0](z)))
        log_lik = (x * logits - F.softplus(logits)).sum()
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum()
        log_q = (-0.5 * ((z - z_loc) / z_scale) ** 2 - z_scale.log() - 0.5 * math.log(2 * math.pi)).sum()
    assert elbo == pytest.approx((log_lik + log_prior - log_q).item(), rel=1e-5)


def test_analytic_kl_matches_sampled_kl_within_monte_carlo_error():
    """KL(N(m, s^2) || N(0, 1)) = 0.5 sum(s^2 + m^2 - 1 - 2 log s) vs E_q[log q - log p]."""
    torch.manual_seed(0)
    loc, scale = torch.randn(7), torch.rand(7) + 0.3
    q, p = dist.Normal(loc, scale).to_event(1), dist.Normal(torch.zeros(7), torch.ones(7)).to_event(1)
    analytic = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum()
    assert torch.distributions.kl_divergence(q, p).item() == pytest.approx(analytic.item(), rel=1e-6)
    z = q.sample((200_000,))
    terms = q.log_prob(z) - p.log_prob(z)
    stderr = terms.std() / math.sqrt(len(terms))
    assert abs(terms.mean() - analytic) < 4 * stderr  # 4 standard errors


def test_vae_kl_term_matches_its_guide():
    """The VAE's sampled KL term E_q[log q(z|x) - log p(z)] converges to the closed form."""
    vae = VAE(VAEConfig(x_dim=6, z_dim=2, hidden_dims=(5,)))
    x = torch.rand(3, 6).round()
    z_loc, z_scale = vae.encode(x)
    analytic = 0.5 * (z_scale**2 + z_loc**2 - 1 - 2 * z_scale.log()).sum()
    with poutine.trace() as tape, pyro.plate("particles", 100_000, dim=-2):
        vae.guide(x)
    z = tape.trace.nodes["z"]["value"].detach()  # (100000, 3, 2)
    log_q = dist.Normal(z_loc, z_scale).log_prob(z).sum(-1)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    terms = (log_q - log_p).sum(-1).detach()
    assert abs(terms.mean() - analytic.detach()) < 4 * terms.std() / math.sqrt(len(terms))


@pytest.mark.parametrize("shape", [(5, 13), (5,), (2, 5, 12)])
def test_wrong_x_shape_gives_a_clear_error(shape):
    vae = VAE(VAEConfig(x_dim=12, z_dim=2, hidden_dims=(4,)))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, x_dim=12\)"):
        vae.model(torch.zeros(shape))
    with pytest.raises(ValueError, match="x_dim=12"):
        vae.guide(torch.zeros(shape))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="Unknown likelihood 'poisson'"):
        VAEConfig(x_dim=4, likelihood="poisson")
    with pytest.raises(ValueError, match="positive"):
        VAEConfig(x_dim=4, z_dim=0)


def test_models_do_not_share_parameters():
    a = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=(3,)))
    b = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=(3,)))
    Trace_ELBO().loss(a.model, a.guide, torch.ones(2, 4))
    assert not torch.equal(a.encoder.loc_scale.weight, b.encoder.loc_scale.weight)
    assert len(pyro.get_param_store()) == 0  # module-local parameters
