"""The handler's fast log-densities equal the distributions' own, on random and adversarial inputs."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pplvae import FastLogProbMessenger, VAE, VAEConfig, log_marginal_likelihood
from pplvae.fast_log_prob import bernoulli_log_prob, fast_log_prob, log_prob_sum, normal_log_prob_sum_at_draw


def exact_bernoulli(logits, value):
    """Per-pixel log-densities in float64: the reference."""
    return dist.Bernoulli(logits=logits.double()).log_prob(value.double()).sum(-1)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-3), (torch.float64, 1e-9)])
@pytest.mark.parametrize("scale", [0.1, 5.0, 40.0, 1e4])
def test_bernoulli_identity_matches_the_per_pixel_formula(dtype, atol, scale):
    """Random logits up to saturation (|l| = 1e4: sigmoid is exactly 1 or 0 in float32)."""
    torch.manual_seed(0)
    logits = (torch.randn(50, 7, 784) * scale).to(dtype)
    value = torch.bernoulli(torch.full((7, 784), 0.3)).to(dtype)
    fast = bernoulli_log_prob(logits, value)
    assert fast.shape == (50, 7) and fast.dtype == dtype
    exact = exact_bernoulli(logits, value)
    # float32 sums of 784 terms of up to |l| = 1e4 nats: relative rounding of the sum
    torch.testing.assert_close(fast.double(), exact, rtol=1e-5, atol=atol)


def test_bernoulli_identity_where_the_model_is_confidently_wrong_and_right():
    """Pixels the logits call impossible (-1e4 nats each) and certain (0 nats): no underflow, no NaN."""
    value = torch.ones(2, 784)
    logits = torch.stack([torch.full((784,), -1e4), torch.full((784,), 1e4)])
    fast = bernoulli_log_prob(logits, value)
    torch.testing.assert_close(fast.double(), exact_bernoulli(logits, value), rtol=1e-6, atol=1e-6)
    assert fast[1] == 0 and torch.isfinite(fast).all()


def test_bernoulli_identity_for_grey_levels_is_the_cross_entropy():
    torch.manual_seed(1)
    logits, value = torch.randn(5, 30, dtype=torch.float64), torch.rand(5, 30, dtype=torch.float64)
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)
    torch.testing.assert_close(bernoulli_log_prob(logits, value), expected)


def test_bernoulli_identity_for_every_width_including_primes():
    torch.manual_seed(2)
    for d in (1, 7, 97, 560, 784, 1031):
        logits, value = torch.randn(4, d, dtype=torch.float64) * 3, torch.bernoulli(torch.full((4, d), 0.5)).double()
        torch.testing.assert_close(bernoulli_log_prob(logits, value), exact_bernoulli(logits, value))



@pytest.mark.parametrize("logits_shape, value_shape", [
    ((50, 1, 30), (1, 30)),  # K samples of one datapoint (a matrix-vector product)
    ((50, 4, 30), (4, 30)),  # K samples of 4 datapoints (one per datapoint)
    ((50, 4, 30), (1, 1, 4, 30)),  # leading size-1 dims of the value
    ((2, 5, 4, 30), (4, 30)),  # several leading sample dims
    ((50, 30), (30,)),
    ((4, 30), (50, 4, 30)),  # the value larger than the logits
    ((50, 4, 30), (50, 1, 30)),  # the value repeats over datapoints, not samples
    ((50, 4, 30), (50, 4, 30)),  # nothing repeats
])
def test_bernoulli_identity_broadcasts_as_log_prob(logits_shape, value_shape):
    torch.manual_seed(3)
    logits = torch.randn(logits_shape, dtype=torch.float64) * 4
    value = torch.bernoulli(torch.full(value_shape, 0.4, dtype=torch.float64))
    expected = dist.Bernoulli(logits=logits).log_prob(value).sum(-1)
    torch.testing.assert_close(bernoulli_log_prob(logits, value), expected)
    mixed = bernoulli_log_prob(logits.float(), value)  # float32 logits, float64 pixels: no matrix product
    torch.testing.assert_close(mixed.double(), expected, rtol=1e-5, atol=1e-4)


def test_bernoulli_identity_on_expanded_logits():
    """Logits a plate expanded (stride 0 over the samples) against their own datapoint."""
    torch.manual_seed(4)
    logits, value = torch.randn(3, 30, dtype=torch.float64).expand(50, 3, 30), torch.bernoulli(torch.rand(3, 30))
    torch.testing.assert_close(bernoulli_log_prob(logits, value.double()), exact_bernoulli(logits, value.double()))


def expanded_normal(batch_shape):
    loc, scale = torch.randn(3, 5), torch.rand(3, 5) + 0.1
    return dist.Normal(loc, scale).to_event(1).expand(batch_shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (dist.Bernoulli(logits=torch.randn(4, 3, 10) * 8).to_event(1), torch.bernoulli(torch.rand(4, 3, 10))),
        lambda: (dist.Bernoulli(probs=torch.rand(4, 3, 10)).to_event(2), torch.bernoulli(torch.rand(4, 3, 10))),
        lambda: (expanded_normal((100, 3)), torch.randn(100, 3, 5)),
        lambda: (dist.Normal(torch.zeros(5), 2.0).expand((100, 3, 5)), torch.randn(100, 3, 5)),
        lambda: (dist.Normal(torch.randn(5), 2.0).to_event(1).to_event(0).expand((2, 3)), torch.randn(2, 3, 5)),
        # the value broadcast up to the batch: an observed image scored under K samples of z
        lambda: (dist.Bernoulli(logits=torch.randn(40, 3, 10) * 8).to_event(1), torch.bernoulli(torch.rand(3, 10))),
        lambda: (expanded_normal((100, 3)), torch.randn(3, 5)),
        # the value larger than the batch
        lambda: (dist.Normal(torch.zeros(5), 1.0).expand((3, 5)).to_event(1), torch.randn(7, 3, 5)),
    ],
)
def test_fast_log_prob_equals_log_prob(make):
    torch.manual_seed(3)
    fn, value = make()
    with torch.no_grad():
        fast = fast_log_prob(fn, value)
        assert fast is not None
        torch.testing.assert_close(fast, fn.log_prob(value), rtol=1e-5, atol=1e-4)


def test_fast_log_prob_validates_like_log_prob():
    with torch.no_grad(), pytest.raises(ValueError, match="support"):
        fast_log_prob(dist.Bernoulli(logits=torch.zeros(2, 3), validate_args=True).to_event(1), torch.full((2, 3), 0.5))


def test_unrecognized_cases_fall_back_to_log_prob():
    """Other distributions, subclasses, broadcasting values and autograd: None, i.e. the site's own log_prob."""

    class MyNormal(dist.Normal):
        pass

    value = torch.randn(4, 3)
    with torch.no_grad():
        assert fast_log_prob(dist.Laplace(0.0, 1.0).expand((4, 3)), value) is None
        assert fast_log_prob(MyNormal(torch.zeros(3), 1.0).expand((4, 3)), value) is None
        assert fast_log_prob(dist.Normal(torch.zeros(4, 3), torch.ones(4, 3)), value) is None  # nothing expanded
    assert fast_log_prob(dist.Normal(torch.zeros(3), 1.0).expand((4, 3)), value) is None  # autograd on



@pytest.mark.parametrize(
    "make",
    [
        # random, saturated (|l| = 1e4) and underflowing logits, binary and grey pixels
        lambda l: (dist.Bernoulli(logits=l).to_event(1), torch.bernoulli(torch.full((6, 10), 0.4))),
        lambda l: (dist.Bernoulli(logits=l * 1e4).to_event(1), torch.bernoulli(torch.full((6, 10), 0.4))),
        lambda l: (dist.Bernoulli(logits=l, validate_args=False).to_event(1), torch.rand(6, 10)),
        lambda l: (dist.Bernoulli(probs=torch.sigmoid(l)).to_event(2), torch.bernoulli(torch.full((6, 10), 0.4))),
        lambda l: (dist.Normal(l, l.exp()).to_event(1), torch.randn(6, 10) * 3),
        lambda l: (dist.Normal(l, 1e-3 + l.square()), torch.randn(6, 10)),  # scales near zero
        # a prior's parameters expanded by a plate: the value has the full shape
        lambda l: (dist.Normal(l[0], l[1].exp()).to_event(1).expand((6,)), torch.randn(6, 10)),
    ],
)
def test_log_prob_sum_equals_the_plain_sum_with_its_gradients(make):
    torch.manual_seed(5)
    params = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    fn, value = make(params)
    value = value.double().requires_grad_(fn.has_rsample)  # a Normal site's value: a reparameterized draw
    inputs = [params, value] if value.requires_grad else [params]
    fast = log_prob_sum(fn, value)
    plain = fn.log_prob(value).sum()
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-8)
    grads = torch.autograd.grad(fast, inputs, retain_graph=True)  # the parameters' graph is shared
    for g, e in zip(grads, torch.autograd.grad(plain, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-8)



@pytest.mark.parametrize("scale_size", [1.0, 1e-4, 1e3])
def test_normal_density_at_its_own_draw_has_log_probs_value_and_gradients(scale_size):
    """Also for tiny and huge scales: the gradients that Normal.log_prob computes through z and directly
    through loc and scale cancel; the form at the draw has only the scale's."""
    torch.manual_seed(6)
    loc = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(7, 5, dtype=torch.float64) * scale_size + 1e-6).requires_grad_()
    eps = torch.randn(7, 5, dtype=torch.float64)
    z = loc + scale * eps
    at_draw = normal_log_prob_sum_at_draw(scale, eps)
    plain = dist.Normal(loc, scale).log_prob(z).sum()
    torch.testing.assert_close(at_draw, plain, rtol=1e-10, atol=1e-8)
    expected = torch.autograd.grad(plain, [loc, scale], retain_graph=True)
    grad_loc, grad_scale = torch.autograd.grad(at_draw, [loc, scale], allow_unused=True)
    assert grad_loc is None  # log q at its own draw does not depend on loc at all
    torch.testing.assert_close(expected[0], torch.zeros_like(loc), rtol=0, atol=1e-6 * scale_size ** -1)
    torch.testing.assert_close(grad_scale, expected[1], rtol=1e-8, atol=1e-6 * scale_size ** -1)

def test_log_prob_sum_validates_and_declines_what_it_does_not_cover():
    with pytest.raises(ValueError, match="support"):
        log_prob_sum(dist.Bernoulli(logits=torch.zeros(2, 3), validate_args=True).to_event(1), torch.full((2, 3), 0.5))

    class MyNormal(dist.Normal):
        pass

    value = torch.randn(4, 3)
    assert log_prob_sum(dist.Laplace(torch.zeros(4, 3), 1.0), value) is None
    assert log_prob_sum(MyNormal(torch.zeros(4, 3), 1.0), value) is None
    assert log_prob_sum(dist.Normal(torch.zeros(3), 1.0), value) is None  # the value broadcast: counts differ
    assert log_prob_sum(dist.Bernoulli(logits=torch.zeros(2, 4, 3)), value) is None  # the value smaller

def plain_vae_pair(x_dim=20, z_dim=4):
    """A VAE as a user writes it: pyro.distributions and nn layers only."""
    decoder = torch.nn.Sequential(torch.nn.Linear(z_dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, x_dim))
    encoder = torch.nn.Sequential(torch.nn.Linear(x_dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2 * z_dim))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(z_dim), torch.ones(z_dim)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))

    return model, guide


def test_handler_scores_a_trace_as_the_plain_trace_does():
    model, guide = plain_vae_pair()
    x = torch.bernoulli(torch.full((6, 20), 0.4))

    def vectorized(fn):
        def run(x):
            with pyro.plate("particles", 300, dim=-2):
                fn(x)
        return run

    with torch.no_grad():
        guide_trace = poutine.trace(vectorized(guide)).get_trace(x)
        with FastLogProbMessenger():
            fast = poutine.trace(poutine.replay(vectorized(model), guide_trace)).get_trace(x)
        plain = poutine.trace(poutine.replay(vectorized(model), guide_trace)).get_trace(x)
    fast.compute_log_prob()
    plain.compute_log_prob()
    for name in ("z", "x"):
        torch.testing.assert_close(fast.nodes[name]["log_prob"], plain.nodes[name]["log_prob"], rtol=1e-5, atol=1e-4)


def test_handler_keeps_scale_and_mask():
    def model():
        with pyro.plate("data", 4), poutine.scale(scale=3.0), poutine.mask(mask=torch.tensor([True, False, True, True])):
            with pyro.plate("particles", 10, dim=-2):
                pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with torch.no_grad(), FastLogProbMessenger():
        trace = poutine.trace(model).get_trace()
    fast = trace.nodes["z"]["log_prob"]
    z = trace.nodes["z"]["value"]
    expected = 3.0 * dist.Normal(0.0, 1.0).log_prob(z).sum(-1) * torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(fast, expected)


def test_handler_leaves_autograd_untouched():
    model, guide = plain_vae_pair()
    x = torch.bernoulli(torch.full((6, 20), 0.4))
    with FastLogProbMessenger():
        trace = poutine.trace(model).get_trace(x)
    assert "log_prob" not in trace.nodes["x"]  # scored later by the distribution itself


def test_plain_pair_gives_the_same_estimate_with_and_without_the_handler(monkeypatch):
    """The estimator with the handler against the same draws scored by the distributions' own log_prob."""
    model, guide = plain_vae_pair()
    x = torch.bernoulli(torch.full((9, 20), 0.4))
    pyro.set_rng_seed(4)
    fast = log_marginal_likelihood(model, guide, x, num_samples=500)
    monkeypatch.setattr("pplvae.fast_log_prob.fast_log_prob", lambda fn, value: None)
    pyro.set_rng_seed(4)
    plain = log_marginal_likelihood(model, guide, x, num_samples=500)
    torch.testing.assert_close(fast.log_px, plain.log_px, rtol=0, atol=1e-4)


def test_shipped_vae_is_plain_pyro():
    """The decoder returns Pyro's own Bernoulli whatever the grad mode; the prior is Pyro's Normal."""
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    z = torch.randn(5, 3)
    for context in (torch.enable_grad, torch.no_grad):
        with context():
            p = vae.decoder(z)
            assert type(p) is dist.Independent and type(p.base_dist) is dist.Bernoulli
    trace = poutine.trace(vae.model).get_trace(torch.zeros(5, 12))
    assert type(trace.nodes["z"]["fn"].base_dist) is dist.Normal


def test_readme_snippet_is_the_code_of_vae_py():
    """The README shows the model and guide that run, line for line (comments aside)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    snippet = re.search(r"```python\n(class VAE\(PyroModule\):.*?)```", (repo / "README.md").read_text(), re.S)[1]
    source = (repo / "pplvae" / "models" / "vae.py").read_text()
    lines = [line.split("#")[0].rstrip() for line in snippet.splitlines()]
    for line in filter(None, lines):
        assert line in source, line
