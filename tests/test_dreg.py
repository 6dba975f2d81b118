"""Tests of the doubly-reparameterized IWAE gradient (Tucker et al. 2019) on a linear-Gaussian model.

Model z ~ N(0, I), x | z ~ N(W z + b, s^2 I) with parameters W, b; guide
q(z | x) = N(A x + c + u_i, diag(exp(l + v_i))^2) with parameters A, c, l and
per-datapoint offsets u_i, v_i that are zero in value. With the minibatch made
of N copies of one x, the loss is a sum over datapoints, so the gradient with
respect to u_i (v_i) is the i-th of N independent one-datapoint gradient
estimates for c (l): N replicates from one backward pass. Everything runs in
float64 with fixed seeds.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pplvae import TrainConfig
from pplvae.objectives import make_objective
from pplvae.objectives.iwae import IWAE_ELBO

X_DIM, Z_DIM = 4, 2


class LinearGaussianVAE(PyroModule):
    """With ``perturbation`` set: W has orthogonal columns, so the exact posterior is mean-field and the
    guide starts at its parameters plus N(0, perturbation^2) noise (Rainforth et al.'s setting, section 4)."""

    def __init__(self, num_data: int, seed: int = 0, perturbation: float | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        f64 = dict(dtype=torch.float64)
        self.W = nn.Parameter(torch.randn(X_DIM, Z_DIM, generator=g, **f64))
        self.b = nn.Parameter(torch.randn(X_DIM, generator=g, **f64))
        # A deliberately poor guide: a random linear map and a too-wide scale.
        self.A = nn.Parameter(0.3 * torch.randn(Z_DIM, X_DIM, generator=g, **f64))
        self.c = nn.Parameter(torch.zeros(Z_DIM, **f64))
        self.log_scale = nn.Parameter(torch.full((Z_DIM,), math.log(0.7), **f64))
        self.loc_offset = nn.Parameter(torch.zeros(num_data, Z_DIM, **f64))
        self.log_scale_offset = nn.Parameter(torch.zeros(num_data, Z_DIM, **f64))
        if perturbation is not None:
            self._near_posterior(g, perturbation)

    @torch.no_grad()
    def _near_posterior(self, g, perturbation):
        f64 = dict(dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=g, **f64))
        self.W.copy_(q * torch.tensor([1.5, 0.8], **f64))  # W^T W diagonal
        cov = torch.linalg.inv(torch.eye(Z_DIM, **f64) + self.W.T @ self.W / 0.5**2)  # posterior, diagonal
        A = cov @ self.W.T / 0.5**2  # posterior mean A x + c
        self.A.copy_(A + perturbation * torch.randn(A.shape, generator=g, **f64))
        self.c.copy_(-A @ self.b + perturbation * torch.randn(Z_DIM, generator=g, **f64))
        self.log_scale.copy_(cov.diagonal().sqrt().log() + perturbation * torch.randn(Z_DIM, generator=g, **f64))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.T + self.c + self.loc_offset  # (N, Z)
            scale = (self.log_scale + self.log_scale_offset).exp()  # (N, Z)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def per_datapoint_grads(gradient: str, num_particles: int, num_data: int, seed: int = 1, perturbation=None):
    """(N, Z) gradients of the bound w.r.t. the guide's loc and log-scale, and the model's W gradient."""
    vae = LinearGaussianVAE(num_data, perturbation=perturbation)
    x = torch.linspace(-1.0, 1.0, X_DIM, dtype=torch.float64).expand(num_data, X_DIM)
    objective = IWAE_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, gradient=gradient)
    pyro.set_rng_seed(seed)
    bound = -objective.differentiable_loss(vae.model, vae.guide, x)
    bound.backward()
    return vae.loc_offset.grad, vae.log_scale_offset.grad, vae.W.grad, bound.detach()


@pytest.mark.parametrize("num_particles", [1, 5])
def test_dreg_has_the_same_value_and_model_gradient(num_particles):
    """Same draws: the bound's value and the model's gradient are the standard ones, to rounding."""
    *_, w_std, value_std = per_datapoint_grads("standard", num_particles, 50)
    *_, w_dreg, value_dreg = per_datapoint_grads("dreg", num_particles, 50)
    torch.testing.assert_close(value_dreg, value_std, rtol=0, atol=1e-9)
    torch.testing.assert_close(w_dreg, w_std, rtol=1e-10, atol=1e-10)


def test_dreg_expected_guide_gradient_equals_iwae_gradient():
    """E[DReG] = E[standard] = grad L_5 for the guide: means of 20,000 replicates agree within 4 standard errors."""
    num_data = 20_000
    for std, dreg in zip(per_datapoint_grads("standard", 5, num_data, seed=1)[:2],
                         per_datapoint_grads("dreg", 5, num_data, seed=2)[:2]):
        stderr = (std.var(0) / num_data + dreg.var(0) / num_data).sqrt()  # (Z,)
        assert ((std.mean(0) - dreg.mean(0)).abs() < 4 * stderr).all(), (std.mean(0), dreg.mean(0), stderr)
        assert (std.mean(0).abs() > 4 * stderr).all()  # a gradient that is not zero, so the test has teeth


def snr(gradient: str, num_particles: int, num_data: int, perturbation: float) -> float:
    """|mean| / sd over N one-datapoint estimates of d L_K / d c_0 (the guide's loc, first coordinate)."""
    loc_grad = per_datapoint_grads(gradient, num_particles, num_data, perturbation=perturbation)[0][:, 0]  # (N,)
    return (loc_grad.mean().abs() / loc_grad.std()).item()


def test_dreg_snr_grows_with_k():
    """Tucker et al. (2019), fig. 1: near the optimum the DReG guide SNR grows like sqrt(K).

    Guide at the exact posterior perturbed by N(0, 0.01^2); 1000 replicates
    per K. Each tenfold K must raise the SNR by more than 1.5 (sqrt(10) = 3.2
    in the limit; measured 11.3, 34.0, 108.5 with 4000; the estimate's own error ~3%).
    """
    values = [snr("dreg", k, 1000, perturbation=0.01) for k in (1, 10, 100)]
    assert values[1] > 1.5 * values[0] and values[2] > 1.5 * values[1], values


def test_standard_iwae_snr_falls_with_k():
    """Rainforth et al. (2018), eq. (9): the IWAE guide SNR falls like 1/sqrt(K).

    Guide perturbed by N(0, 0.1^2), far enough from the optimum that the mean
    gradient stands out of 4000 replicates (SNR's standard error 0.016);
    measured 0.59, 0.19, 0.08. Each tenfold K must lower it by more than 1.5,
    while DReG's is more than ten times larger at K = 100 (measured 8.2).
    """
    values = [snr("standard", k, 4000, perturbation=0.1) for k in (1, 10, 100)]
    assert values[1] < values[0] / 1.5 and values[2] < values[1] / 1.5, values
    assert snr("dreg", 100, 4000, perturbation=0.1) > 10 * values[2]


def test_dreg_trains_a_pyro_module_guide_and_checks_its_arguments():
    vae = LinearGaussianVAE(8)
    x = torch.zeros(8, X_DIM, dtype=torch.float64)
    objective = make_objective("iwae", num_particles=3, gradient="dreg")
    assert objective.gradient == "dreg"
    loss = objective.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert all(p.grad is not None for p in (vae.A, vae.c, vae.log_scale, vae.W, vae.b))
    with pytest.raises(ValueError, match="method of a torch.nn.Module"):
        objective.differentiable_loss(vae.model, lambda x: vae.guide(x), x)
    with pytest.raises(ValueError, match="gradient"):
        make_objective("elbo", gradient="dreg")
    with pytest.raises(ValueError, match="gradient"):
        make_objective("iwae", gradient="sticking")


def test_dreg_is_refused_with_a_recorded_graph():
    assert TrainConfig(objective="iwae", num_particles=2, gradient="dreg").build_objective().gradient == "dreg"
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(objective="iwae", num_particles=2, gradient="dreg", compile=True)
