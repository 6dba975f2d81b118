"""The model/guide pairs written in examples/ as a user would write them: the convolutional VAE.

Each pair is checked against its math on tiny random data: trace shapes,
exact identities of the objective, the ordering of the importance-sampling
bounds. The scripts themselves run end to end in ``tests/test_variants.py``.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pplvae import log_marginal_likelihood

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def conv_vae_module():
    return runpy.run_path(str(EXAMPLES / "conv_vae_mnist.py"))


def site_shapes(trace) -> dict[str, tuple[int, ...]]:
    return {name: tuple(site["value"].shape) for name, site in trace.nodes.items() if site["type"] == "sample"}


def test_conv_vae_takes_its_sizes_from_the_images(conv_vae_module):
    vae = conv_vae_module["ConvVAE"]((3, 16, 8), z_dim=4, channels=(4, 8), hidden=16)
    x = torch.bernoulli(torch.full((5, 3, 16, 8), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert site_shapes(model_trace) == {"data": (5,), "z": (5, 4), "x": (5, 3, 16, 8)}
    assert model_trace.nodes["x"]["fn"].event_shape == (3, 16, 8)  # one log-density per image
    assert vae.logits(torch.zeros(7, 5, 4)).shape == (7, 5, 3, 16, 8)  # K samples of z at once
    with pytest.raises(ValueError, match="divisible by 4"):
        conv_vae_module["ConvVAE"]((1, 28, 30), channels=(4, 8))
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 16, 8\)"):
        vae.model(x.reshape(5, -1))


def test_conv_vae_log_px_bounds_are_ordered(conv_vae_module):
    """ELBO <= IWAE-5 <= log p̂ per image (K = 50: the groups nest, Jensen holds for every draw)."""
    vae = conv_vae_module["ConvVAE"]((1, 28, 28), z_dim=4, channels=(4, 8), hidden=16)
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.2))
    estimate = log_marginal_likelihood(vae.model, vae.guide, x, num_samples=50)
    elbo, iwae_5, log_px = estimate.bounds[1], estimate.bounds[5], estimate.log_px  # (3,) nats per image
    assert torch.isfinite(log_px).all() and (log_px < 0).all()
    assert (elbo <= iwae_5 + 1e-9).all() and (iwae_5 <= log_px + 1e-9).all()
    # The ELBO averaged over the K draws estimates Trace_ELBO's (one draw per image, many repetitions).
    with torch.no_grad():
        trace_elbo = -Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            vae.model, vae.guide, x) / 3
    assert elbo.mean().item() == pytest.approx(trace_elbo, abs=0.5)
