"""IndependentBernoulli and its fast log-density against Bernoulli's own, and the fast tanh."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pplvae.distributions import IndependentBernoulli, _block_size, bernoulli_log_prob
from pplvae.networks import Tanh


def reference(logits, value):
    """Bernoulli(logits).to_event(1).log_prob: the per-pixel formula, as Pyro computes it."""
    return dist.Bernoulli(logits=logits, validate_args=False).to_event(1).log_prob(value)


@pytest.mark.parametrize("d", [784, 13, 127, 1])
@pytest.mark.parametrize("grey", [False, True])
def test_fast_log_prob_equals_bernoulli_in_float64(d, grey):
    torch.manual_seed(0)
    logits = 8 * torch.randn(30, 4, d, dtype=torch.float64)  # (k, n, D): samples x datapoints
    logits[0, 0, 0], logits[0, 1, 0], logits[1, 0, 0] = 500.0, -500.0, 0.0  # far tails and the kink
    value = torch.rand(4, d, dtype=torch.float64)  # (n, D), broadcast over the k samples
    value = value if grey else (value < 0.3).to(torch.float64)
    fast = bernoulli_log_prob(logits, value)
    assert fast.shape == (30, 4)
    torch.testing.assert_close(fast, reference(logits, value), rtol=0, atol=1e-10)


def test_fast_log_prob_float32_error_is_float_rounding():
    """In float32 both forms are off the exact value by the rounding of 784-term sums, about 1e-4 nats."""
    torch.manual_seed(1)
    logits = 5 * torch.randn(200, 784)
    value = (torch.rand(200, 784) < 0.2).float()
    exact = reference(logits.double(), value.double())
    fast_error = (bernoulli_log_prob(logits, value).double() - exact).abs().max()
    bce_error = (reference(logits, value).double() - exact).abs().max()
    assert fast_error < 1e-3 and fast_error < 4 * bce_error


def test_block_size_keeps_products_of_sigmoids_normal():
    assert _block_size(784, torch.float32) == 56  # 0.5^56 = 1.4e-17 >> 1.2e-38
    assert _block_size(127, torch.float32) == 1  # prime: one log per pixel
    assert _block_size(784, torch.float16) == 7  # 0.5^7 >= 6.1e-5, float16's smallest normal
    logits = torch.full((3, 784), 40.0, dtype=torch.float16)  # sigmoid(|l|) rounds to 1
    assert torch.isfinite(bernoulli_log_prob(logits, torch.zeros(784, dtype=torch.float16))).all()


def test_independent_bernoulli_is_bernoulli_to_event():
    torch.manual_seed(2)
    logits = torch.randn(5, 3, 784, requires_grad=True)
    x = (torch.rand(3, 784) < 0.5).float()
    p, q = IndependentBernoulli(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert (p.batch_shape, p.event_shape) == (q.batch_shape, q.event_shape) == ((5, 3), (784,))
    torch.testing.assert_close(p.mean, q.mean)
    assert p.sample().shape == (5, 3, 784)
    expanded = p.expand((2, 5, 3))
    assert isinstance(expanded, IndependentBernoulli) and expanded.batch_shape == (2, 5, 3)

    with_grad = p.log_prob(x)  # autograd: Bernoulli's fused binary_cross_entropy_with_logits
    torch.testing.assert_close(with_grad, q.log_prob(x), rtol=0, atol=0)
    with_grad.sum().backward()
    torch.testing.assert_close(logits.grad, (x - torch.sigmoid(logits)).detach())
    with torch.no_grad():  # the fast form
        torch.testing.assert_close(p.log_prob(x), q.log_prob(x), rtol=1e-6, atol=1e-3)


def test_row_blocks_agree_with_one_piece():
    """Above 512 KiB of logits per thread the no-grad log_prob works in pieces along dim 0; same numbers."""
    torch.manual_seed(3)
    logits = 3 * torch.randn(1000, 3, 784)  # 9 MB: 18 pieces on one thread, 9 on two
    x = (torch.rand(3, 784) < 0.5).float()
    x_full = (torch.rand(1000, 3, 784) < 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(IndependentBernoulli(logits).log_prob(x), bernoulli_log_prob(logits, x))
        torch.testing.assert_close(IndependentBernoulli(logits).log_prob(x_full), bernoulli_log_prob(logits, x_full))
        wider = IndependentBernoulli(logits[0]).log_prob(x_full)  # value's batch is the larger: one piece
        torch.testing.assert_close(wider, bernoulli_log_prob(logits[0], x_full))


def test_masked_and_scaled_in_a_pyro_model():
    torch.manual_seed(4)
    logits, x = torch.randn(6, 784), (torch.rand(6, 784) < 0.5).float()
    mask = torch.tensor([True, False, True, True, False, True])

    def model():
        with pyro.plate("data", 6), poutine.scale(scale=2.0), poutine.mask(mask=mask):
            pyro.sample("x", IndependentBernoulli(logits), obs=x)

    with torch.no_grad():
        trace = poutine.trace(model).get_trace()
        trace.compute_log_prob()
    expected = 2.0 * reference(logits, x) * mask
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], expected, rtol=1e-6, atol=1e-3)


def test_tanh_fast_form_and_gradient():
    x = torch.linspace(-20, 20, 4001)
    with torch.no_grad():
        torch.testing.assert_close(Tanh()(x), torch.tanh(x), rtol=0, atol=3e-7)
    x.requires_grad_(True)
    y = Tanh()(x)  # under autograd: torch.tanh itself
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)
