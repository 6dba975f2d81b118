"""The model/guide pairs written in examples/ as a user would write them: the convolutional VAE and Kingma's M2.

Each pair is checked against its math on tiny random data: trace shapes,
exact identities of the objective, the ordering of the importance-sampling
bounds. The scripts themselves run end to end in ``tests/test_variants.py``.
"""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

from pplvae import log_marginal_likelihood

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def conv_vae_module():
    return runpy.run_path(str(EXAMPLES / "conv_vae_mnist.py"))


@pytest.fixture(scope="module")
def m2_module():
    return runpy.run_path(str(EXAMPLES / "m2_semisupervised.py"))


def site_shapes(trace) -> dict[str, tuple[int, ...]]:
    return {name: tuple(site["value"].shape) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def test_conv_vae_takes_its_sizes_from_the_images(conv_vae_module):
    vae = conv_vae_module["ConvVAE"]((3, 16, 8), z_dim=4, channels=(4, 8), hidden=16)
    x = torch.bernoulli(torch.full((5, 3, 16, 8), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert site_shapes(model_trace) == {"z": (5, 4), "x": (5, 3, 16, 8)}
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


def mixed_batch(num_classes=3, x_dim=6):
    x = torch.bernoulli(torch.full((5, x_dim), 0.5))
    y = torch.tensor([2, 0, 1, 0, 0])
    labelled = torch.tensor([True, False, True, False, False])
    return x, torch.where(labelled, y, 0), labelled


def test_m2_guide_enumerates_y_on_unlabelled_rows_only(m2_module):
    m2 = m2_module["M2"](x_dim=6, num_classes=3, z_dim=2, hidden=4, classification_weight=1.0)
    batch = mixed_batch()
    max_plate_nesting = m2_module["MAX_PLATE_NESTING"]
    enumerated_guide = poutine.enum(m2.guide, first_available_dim=-1 - max_plate_nesting)
    guide_trace = poutine.trace(enumerated_guide).get_trace(*batch)
    model_trace = poutine.trace(poutine.replay(m2.model, trace=guide_trace)).get_trace(*batch)
    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    assert guide_trace.nodes["y"]["infer"]["enumerate"] == "parallel"
    assert site_shapes(guide_trace) == {"z_labelled": (2, 2), "y": (3, 1), "z": (3, 3, 2)}  # y: 3 classes at dim -2
    assert model_trace.nodes["y_labelled"]["is_observed"] and model_trace.nodes["y_classified"]["is_observed"]
    assert site_shapes(model_trace)["x"] == (3, 6) and site_shapes(model_trace)["x_labelled"] == (2, 6)
    loss = elbo.differentiable_loss(m2.model, m2.guide, *batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m2.parameters() if p.grad is not None)
    assert m2.classifier[0].weight.grad.abs().sum() > 0  # the classifier learns from both kinds of rows


def test_m2_unlabelled_elbo_sums_y_exactly(m2_module):
    """TraceEnum_ELBO on unlabelled rows = sum_y q(y|x) [log p(x, y, z_y) - log q(z_y|x, y)] + H(q(y|x)) (eq. (7))."""
    m2 = m2_module["M2"](x_dim=6, num_classes=3, z_dim=2, hidden=4)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    unlabelled = torch.zeros(4, dtype=torch.bool)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, torch.zeros(4, dtype=torch.long),
                                                    unlabelled)
    pyro.set_rng_seed(3)  # the same draws of z, one per class: (3, 4, 2)
    with torch.no_grad():
        ys = torch.arange(3).unsqueeze(-1)  # (3, 1)
        one_hot = torch.nn.functional.one_hot(ys, 3).float()  # (3, 1, 3)
        z_loc, z_log_scale = m2.encoder_out(m2.encoder_x(x) + m2.encoder_y(one_hot)).chunk(2, dim=-1)
        q_z = dist.Normal(z_loc, z_log_scale.exp()).to_event(1)  # batch (3, 4)
        z = q_z.rsample()
        log_p = (dist.Categorical(m2.y_probs).log_prob(ys)
                 + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + dist.Bernoulli(logits=m2.decoder_out(m2.decoder_z(z) + m2.decoder_y(one_hot)))
                 .log_prob(x).sum(-1))  # (3, 4)
        q_y = torch.softmax(m2.classifier(x), -1).T  # (3, 4)
        exact = (q_y * (log_p - q_z.log_prob(z) - q_y.log())).sum()  # summed over the 4 images
    assert -loss == pytest.approx(exact.item(), rel=1e-5)


def test_m2_classification_term_is_alpha_log_q_y_on_labelled_rows(m2_module):
    """Eq. (9): the loss grows by exactly classification_weight * sum over labelled rows of -log q(y|x)."""
    M2 = m2_module["M2"]
    batch = mixed_batch()
    losses = []
    for weight in (0.0, 7.0):
        pyro.set_rng_seed(0)
        m2 = M2(x_dim=6, num_classes=3, z_dim=2, hidden=4, classification_weight=weight)  # the same weights
        pyro.set_rng_seed(1)
        losses.append(TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, *batch))
    x, y, labelled = batch
    log_q = torch.log_softmax(m2.classifier(x[labelled]), -1).gather(-1, y[labelled, None]).sum()
    assert losses[1] - losses[0] == pytest.approx(-7.0 * log_q.item(), rel=1e-5)


def test_m2_log_px_sums_y_by_importance_sampling(m2_module):
    """The unlabelled pair samples y ~ q(y|x); with K samples its bounds are ordered and near the enumerated ELBO."""
    m2 = m2_module["M2"](x_dim=6, num_classes=3, z_dim=2, hidden=4)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    estimate = log_marginal_likelihood(m2.model_unlabelled, m2.guide_unlabelled, x, num_samples=2000)
    assert (estimate.bounds[1] <= estimate.bounds[50] + 1e-9).all()
    assert (estimate.bounds[50] <= estimate.log_px + 1e-9).all()
    # log p(x) >= ELBO, and with 6 pixels the bound is within a few nats.
    elbo = -TraceEnum_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
        m2.model_unlabelled, m2.guide_unlabelled, x) / 4
    assert elbo - 0.1 < estimate.log_px.mean().item() < elbo + 6 * math.log(2)


def test_partly_labelled_hides_the_labels_it_does_not_give(m2_module):
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    mask = m2_module["balanced_labelled"](labels, 1, torch.Generator().manual_seed(0))
    assert mask.sum() == 7 and set(labels[mask].tolist()) == {1, 2, 3, 4, 5, 6, 9}  # one of each class
    data = m2_module["PartlyLabelled"](torch.rand(8, 4), labels, mask, transform=torch.bernoulli)
    x, y, labelled = zip(*(data[i] for i in range(8)))
    assert all(((v == 0) | (v == 1)).all() for v in x)
    assert torch.equal(torch.stack(y), torch.where(mask, labels, 0)) and torch.equal(torch.stack(labelled), mask)
    with pytest.raises(ValueError, match="8 images, 7 labels"):
        m2_module["PartlyLabelled"](torch.rand(8, 4), labels[:7], mask)
