"""FastTrace_ELBO gives Trace_ELBO's loss and gradients, exactly, without host syncs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pplvae import FastTrace_ELBO, TrainConfig, Trainer, VAE, VAEConfig


def loss_and_grads(elbo, model, guide, params, *args, seed=1):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


def assert_same_as_trace_elbo(model, guide, params, *args):
    expected, expected_grads = loss_and_grads(Trace_ELBO(), model, guide, params, *args)
    with pyro.validation_enabled(False):
        actual, grads = loss_and_grads(FastTrace_ELBO(), model, guide, params, *args)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_loss_and_gradients_equal_trace_elbo(likelihood):
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,), likelihood=likelihood))
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    assert_same_as_trace_elbo(vae.model, vae.guide, list(vae.parameters()), x)


def test_subsampled_plate_scale_and_mask_equal_trace_elbo():
    loc = torch.tensor(0.3, requires_grad=True)
    scale = torch.tensor(0.8, requires_grad=True)
    data = torch.randn(10)
    mask = torch.tensor([True, False, True, True, False, True, True, True, False, True])

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 10, subsample_size=4) as idx, poutine.scale(scale=0.5):
            with poutine.mask(mask=mask[idx]):
                pyro.sample("x", dist.Normal(mu, 1.0), obs=data[idx])

    def guide(data):
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", 10, subsample_size=4):
            pass

    assert_same_as_trace_elbo(model, guide, [loc, scale], data)



def test_hierarchical_guide_with_scaled_subsampled_plate_equals_trace_elbo():
    """Guide draws that feed later guide sites, scales from subsampling and poutine.scale, no mask:
    the sites the handler draws itself and scores at their own draw."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 4)  # q(z1 | z2, x) and p(x | z1) share nothing else
    w = torch.randn(3, requires_grad=True)
    scale = torch.tensor(0.7, requires_grad=True)
    data = torch.randn(10, 2)

    def model(data):
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", 10, subsample_size=4) as idx, poutine.scale(scale=0.5):
            z1 = pyro.sample("z1", dist.Normal(z2.expand(4, 3), 2.0).to_event(1))
            pyro.sample("x", dist.Normal(z1[:, :2] * w[:2], scale).to_event(1), obs=data[idx])

    def guide(data):
        z2 = pyro.sample("z2", dist.Normal(w, scale).to_event(1))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            loc, log_scale = net(torch.cat([data[idx], z2[:1].expand(4, 1)], -1)).split([3, 1], -1)
            pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))

    assert_same_as_trace_elbo(model, guide, [w, scale, *net.parameters()], data)

def test_falls_back_to_trace_elbo_for_a_discrete_guide():
    probs = torch.tensor(0.3, requires_grad=True)

    def model():
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c, 1.0), obs=torch.tensor(0.7))

    def guide():
        pyro.sample("c", dist.Bernoulli(probs))

    assert_same_as_trace_elbo(model, guide, [probs])


def test_makes_no_host_sync(monkeypatch):
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((5, 12), 0.3))

    def no_item(self):
        raise AssertionError(".item() called: a host-device sync on a GPU")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    with pyro.validation_enabled(False):
        FastTrace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()


def test_trainer_step_is_the_trace_elbo_loss_per_datapoint():
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    trainer = Trainer(vae, TrainConfig(device="cpu"))
    assert isinstance(trainer.loss.objective, FastTrace_ELBO)  # the default "elbo" objective at beta=1
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    pyro.set_rng_seed(2)
    expected = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).detach() / 6
    pyro.set_rng_seed(2)
    with pyro.validation_enabled(False):
        actual = trainer.step(x)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def test_beta_elbo_takes_the_fast_path_at_beta_1_and_scales_latents_otherwise():
    from pplvae.objectives import make_objective

    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    for beta in (1.0, 0.3):
        pyro.set_rng_seed(4)
        expected = make_objective("elbo", beta=beta).differentiable_loss(vae.model, vae.guide, x)  # validation on
        pyro.set_rng_seed(4)
        with pyro.validation_enabled(False):
            actual = make_objective("elbo", beta=beta).differentiable_loss(vae.model, vae.guide, x)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-5)
