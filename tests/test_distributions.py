"""IndependentBernoulli, LinearBernoulli and the fast log-density against Bernoulli's own, and the fast tanh."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from torch.nn import functional as F

from pplvae.distributions import (
    IndependentBernoulli,
    LinearBernoulli,
    Normal,
    _block_size,
    _sum_log_sigmoid_,
    bernoulli_log_prob,
)
from pplvae.networks import BernoulliDecoder, Tanh, mlp


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


def test_tanh_in_place_only_without_autograd():
    x = torch.linspace(-4, 4, 9)
    with torch.no_grad():
        y = x.clone()
        out = Tanh(inplace=True)(y)
        assert out.data_ptr() == y.data_ptr()  # overwritten: no new tensor
        torch.testing.assert_close(out, torch.tanh(x), rtol=0, atol=3e-7)
        z = x.clone()
        Tanh()(z)
        torch.testing.assert_close(z, x, rtol=0, atol=0)  # left alone by default
    leaf = x.clone().requires_grad_()
    h = leaf * 1.0
    out = Tanh(inplace=True)(h)  # under autograd: torch.tanh, h untouched
    torch.testing.assert_close(h, x)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, 1 - torch.tanh(x) ** 2)


def _linear_bernoulli(k=5, n=3, h=20, d=784, seed=5, requires_grad=False):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(h, d)
    features = torch.randn(k, n, h, requires_grad=requires_grad)
    return LinearBernoulli(features, layer.weight, layer.bias), IndependentBernoulli(layer(features)), layer, features


def test_linear_bernoulli_is_independent_bernoulli_of_the_layer():
    p, q, layer, features = _linear_bernoulli(requires_grad=True)
    x = (torch.rand(3, 784) < 0.5).float()
    assert (p.batch_shape, p.event_shape) == (q.batch_shape, q.event_shape) == ((5, 3), (784,))
    assert "features: (5, 3, 20)" in repr(p) and p._base is None  # nothing computed yet
    torch.testing.assert_close(p.mean, q.mean)
    torch.testing.assert_close(p.logits, layer(features))
    assert p.sample().shape == (5, 3, 784) and not p.has_rsample
    assert p.support.check(p.sample()).all()

    # Under autograd: Bernoulli's own log-density and the same gradients as the layer's.
    p, q, layer, features = _linear_bernoulli(requires_grad=True)
    torch.testing.assert_close(p.log_prob(x), q.log_prob(x), rtol=0, atol=0)
    grads_p = torch.autograd.grad(p.log_prob(x).sum(), [features, layer.weight, layer.bias])
    grads_q = torch.autograd.grad(q.log_prob(x).sum(), [features, layer.weight, layer.bias])
    for a, b in zip(grads_p, grads_q):
        torch.testing.assert_close(a, b)


def test_linear_bernoulli_never_builds_all_logits_without_grad():
    """On a CPU the no-grad log-density computes the logits piece by piece: equal to one piece, none kept."""
    p, q, _, _ = _linear_bernoulli(k=1000, n=3, h=50)  # 9 MB of logits: several pieces on any thread count
    x = (torch.rand(3, 784) < 0.5).float()
    x_full = (torch.rand(1000, 3, 784) < 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(p.log_prob(x), bernoulli_log_prob(q.logits, x))
        torch.testing.assert_close(p.log_prob(x_full), bernoulli_log_prob(q.logits, x_full))
    assert p._base is None


@pytest.mark.parametrize("k, n", [(5, 1), (1000, 1), (7, 3), (1000, 3)])
@pytest.mark.parametrize("d", [784, 13, 127])
def test_binary_pixels_signed_form_is_exact_in_float64(k, n, d):
    """Binary pixels shared by all samples: signs folded into the layer (n = 1) or multiplied in (n = 3).

    1000 samples make several pieces on any thread count; the +-500 logits of the
    first samples are confidently wrong pixels whose products of sigmoids underflow,
    and the zero weights of one datapoint give logits of exactly 0.
    """
    torch.manual_seed(10)
    layer = torch.nn.Linear(20, d).double()
    features = 3 * torch.randn(k, n, 20, dtype=torch.float64)
    x = (torch.rand(n, d, dtype=torch.float64) < 0.3).double()
    logits = layer(features).detach()
    logits[0, 0, :] = 500.0 * (1 - 2 * x[0])  # every pixel wrong by 500: all products underflow
    logits[-1, -1, : d // 2] = -500.0 * (2 * x[-1, : d // 2] - 1)
    with torch.no_grad():
        expected = reference(logits, x)
        for value in (x, x.unsqueeze(0)):  # (n, D) or (1, n, D): broadcast along the samples
            torch.testing.assert_close(IndependentBernoulli(logits).log_prob(value), expected, rtol=0, atol=1e-9)
        p = LinearBernoulli(features, layer.weight.detach(), layer.bias.detach())
        q = IndependentBernoulli(layer(features))
        torch.testing.assert_close(p.log_prob(x), reference(q.logits, x), rtol=0, atol=1e-9)
        assert p._base is None  # still no logits kept
    assert torch.isfinite(expected).all() and expected[0, 0] < -500 * d / 2


def test_sum_log_sigmoid_flags_exactly_the_underflowing_rows():
    y = torch.zeros(4, 784)
    y[1, ::98] = -12.0  # 8 pixels of one block: product 6e-6^8 = 1.7e-42 < 1.2e-38
    y[2, :8] = -12.0  # 8 pixels in 8 different blocks: no product underflows
    y[3, 0] = -200.0  # one pixel whose sigmoid is 0 in float32
    expected = torch.nn.functional.logsigmoid(y.double()).sum(-1)
    out, underflow = _sum_log_sigmoid_(y.clone())
    assert underflow.tolist() == [False, True, False, True]
    torch.testing.assert_close(out[~underflow].double(), expected[~underflow], rtol=1e-6, atol=1e-4)
    assert out[3] == -float("inf")


def test_grey_pixels_or_pixels_per_sample_keep_the_general_form():
    torch.manual_seed(11)
    logits = 3 * torch.randn(1000, 2, 784)
    grey, per_sample = torch.rand(2, 784), (torch.rand(1000, 2, 784) < 0.5).float()
    with torch.no_grad():
        for value in (grey, per_sample):
            p = IndependentBernoulli(logits, validate_args=False)  # grey levels: a cross-entropy
            torch.testing.assert_close(p.log_prob(value), bernoulli_log_prob(logits, value))


@pytest.mark.parametrize("n", [1, 3])
def test_linear_bernoulli_with_a_body_runs_the_whole_decoder_in_pieces(n):
    """body(z) is computed piece by piece with the logits: same nats, and no hidden layer is kept."""
    torch.manual_seed(12)
    body, layer = mlp(10, (30, 20)).double(), torch.nn.Linear(20, 784).double()
    z = torch.randn(1000, n, 10, dtype=torch.float64)  # 1000 x n x 784 logits: several pieces
    x = (torch.rand(n, 784, dtype=torch.float64) < 0.3).double()
    with torch.no_grad():
        expected = reference(layer(body(z)), x)
        p = LinearBernoulli(z, layer.weight, layer.bias, body=body.without_grad())
        assert p.batch_shape == (1000, n) and "inputs of body: (1000, %d, 10)" % n in repr(p)
        torch.testing.assert_close(p.log_prob(x), expected, rtol=0, atol=1e-9)
        assert p._features is None and p._base is None  # neither hidden layers nor logits kept
        torch.testing.assert_close(p.mean, torch.sigmoid(layer(body(z))))  # built on demand
        expanded = LinearBernoulli(z[:1], layer.weight, layer.bias, body=body).expand((4, 1, n))
        assert expanded.body is body and expanded.inputs.shape == (4, 1, n, 10)
        torch.testing.assert_close(expanded.log_prob(x), expected[:1].expand(4, 1, n), rtol=0, atol=1e-9)
    z.requires_grad_(True)  # under autograd: the body once, Bernoulli's own log-density
    p = LinearBernoulli(z, layer.weight, layer.bias, body=body)
    (grad,) = torch.autograd.grad(p.log_prob(x).sum(), [z])
    (expected_grad,) = torch.autograd.grad(reference(layer(body(z)), x).sum(), [z])
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_mlp_without_grad_is_its_forward(dtype, atol):
    torch.manual_seed(13)
    tanh_net, relu_net = mlp(50, (200, 200)).to(dtype), mlp(50, (200,), activation="relu").to(dtype)
    z = 3 * torch.randn(7, 5, 50, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(tanh_net.without_grad()(z), torch.tanh(tanh_net[2](torch.tanh(tanh_net[0](z)))),
                                   rtol=0, atol=atol)
        assert relu_net.without_grad() == relu_net.forward


def test_bernoulli_decoder_without_grad_gives_the_lazy_decoder_with_the_same_log_density():
    torch.manual_seed(14)
    decoder = BernoulliDecoder(z_dim=50, x_dim=784, hidden_dims=(200, 200))
    z, x = torch.randn(600, 2, 50), (torch.rand(2, 784) < 0.3).float()
    trained_way = decoder(z).log_prob(x)  # under autograd: the features now, torch's Bernoulli
    with torch.no_grad():
        p = decoder(z)
        assert p.body is not None and p._features is None
        torch.testing.assert_close(p.log_prob(x), trained_way.detach(), rtol=1e-6, atol=2e-3)


def test_linear_bernoulli_expands_its_features():
    p, q, _, _ = _linear_bernoulli(k=1, n=3)
    expanded = p.expand((2, 4, 3))
    assert isinstance(expanded, LinearBernoulli) and expanded.batch_shape == (2, 4, 3)
    assert expanded._base is None and expanded.features.shape == (2, 4, 3, 20)
    x = (torch.rand(3, 784) < 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(expanded.log_prob(x), q.expand((2, 4, 3)).log_prob(x))
    p.logits  # once computed, the logits are expanded instead
    assert isinstance(p.expand((2, 1, 3)), IndependentBernoulli)
    torch.testing.assert_close(p.expand((2, 1, 3)).mean, q.expand((2, 1, 3)).mean)


def test_linear_bernoulli_rejects_mismatched_shapes():
    layer = torch.nn.Linear(20, 784)
    with pytest.raises(ValueError, match=r"features \(\.\.\., H\), weight \(D, H\)"):
        LinearBernoulli(torch.randn(4, 21), layer.weight, layer.bias)
    with pytest.raises(ValueError, match="bias"):
        LinearBernoulli(torch.randn(4, 20), layer.weight, torch.zeros(783))


def test_linear_bernoulli_in_a_pyro_model_with_plates_masks_and_scales():
    torch.manual_seed(6)
    layer, features = torch.nn.Linear(20, 784), torch.randn(6, 20)
    x = (torch.rand(6, 784) < 0.5).float()
    mask = torch.tensor([True, False, True, True, False, True])

    def model(make):
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 6), poutine.scale(scale=2.0), poutine.mask(mask=mask):
            pyro.sample("x", make(), obs=x)

    traces = []
    for make in (lambda: LinearBernoulli(features, layer.weight, layer.bias), lambda: IndependentBernoulli(layer(features))):
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(make)
            trace.compute_log_prob()
        traces.append(trace.nodes["x"]["log_prob"])
    assert traces[0].shape == (4, 6)
    torch.testing.assert_close(traces[0], traces[1], rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("loc_shape, scale_shape", [((50,), (50,)), ((3, 50), (3, 50)), ((3, 50), ()), ((), (1, 3, 50))])
def test_normal_log_prob_equals_pyros_after_expand(loc_shape, scale_shape):
    """Expanded by plates to (K, N, D) = (7, 3, 50), or not: the same nats as dist.Normal, float64."""
    torch.manual_seed(7)
    loc = torch.randn(loc_shape, dtype=torch.float64)
    scale = torch.rand(scale_shape, dtype=torch.float64) + 0.1
    value = torch.randn(7, 3, 50, dtype=torch.float64)
    ours, pyros = Normal(loc, scale), dist.Normal(loc, scale)
    for p, q in ((ours, pyros), (ours.expand((7, 3, 50)), pyros.expand((7, 3, 50)))):
        assert type(p) is Normal
        torch.testing.assert_close(p.log_prob(value), q.log_prob(value), rtol=0, atol=1e-12)
    torch.testing.assert_close(  # value smaller than the expanded batch: broadcast up
        ours.expand((7, 3, 50)).log_prob(value[0]), pyros.expand((7, 3, 50)).log_prob(value[0]), rtol=0, atol=1e-12
    )


def test_normal_under_autograd_is_torchs_log_prob():
    torch.manual_seed(8)
    loc, scale = torch.zeros(5), torch.ones(5)  # buffers, as a prior's
    z = (torch.randn(4, 5) * 2).requires_grad_()  # a reparameterized draw
    ours = Normal(loc, scale).expand((4, 5)).log_prob(z)
    torch.testing.assert_close(ours, dist.Normal(loc, scale).expand((4, 5)).log_prob(z), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(ours.sum(), z)
    torch.testing.assert_close(grad, -z.detach())


def test_normal_in_a_pyro_trace_with_particles_mask_and_scale():
    torch.manual_seed(9)
    loc, scale, mask = torch.randn(6, 50), torch.rand(6, 50) + 0.5, torch.tensor([True, False] * 3)

    def model(normal):
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 6), poutine.scale(scale=3.0), poutine.mask(mask=mask):
            pyro.sample("z", normal(torch.zeros(50), torch.ones(50)).to_event(1))
            pyro.sample("w", normal(loc, scale).to_event(1))

    with torch.no_grad():
        trace = poutine.trace(model).get_trace(Normal)
        trace.compute_log_prob()
        expected = poutine.trace(poutine.replay(model, trace=trace)).get_trace(dist.Normal)
        expected.compute_log_prob()
    for name in ("z", "w"):
        assert trace.nodes[name]["log_prob"].shape == (4, 6)
        torch.testing.assert_close(trace.nodes[name]["log_prob"], expected.nodes[name]["log_prob"])
