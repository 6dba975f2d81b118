"""Tests of pplvae.marginal against closed-form marginal likelihoods.

The linear-Gaussian model z ~ N(0, I), x | z ~ N(W z + b, s^2 I) has
log p(x) = log N(x; b, W W^T + s^2 I) and the posterior
q*(z | x) = N(Sigma W^T (x - b) / s^2, Sigma), Sigma = (I + W^T W / s^2)^-1;
with q* as guide every importance weight equals p(x), so the estimate is exact
for any K. Everything runs in float64; tolerances are stated per test.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.stats import fit_generalized_pareto

from pplvae import MarginalLikelihood, log_marginal_likelihood
from pplvae.marginal import _chunk_shape, _pareto_k, _StreamingWeights, _tail_size

X_DIM, Z_DIM, Y_DIM, NUM_DATA = 5, 3, 2, 40
EXACT_ATOL = 1e-10  # nats; float64 rounding of sums of ~10 terms of size ~10


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tensors are tiny, and thread hand-offs cost more than they save.

    (conftest.py resets the param store, seeds with 0 and turns validation on.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearGaussian:
    """z ~ N(0, I_Z), [y -> V y], x | z ~ N(W z + V y + b, s^2 I_X), with its exact posterior."""

    def __init__(self, seed=0, noise_scale=0.5):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64)
        self.V = torch.randn(X_DIM, Y_DIM, generator=g, dtype=torch.float64)
        self.b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
        self.s = noise_scale
        eye = torch.eye(Z_DIM, dtype=torch.float64)
        self.post_cov = torch.linalg.inv(eye + self.W.T @ self.W / self.s**2)  # (Z, Z)

    def offset(self, y):
        return self.b if y is None else self.b + y @ self.V.T  # (X,) or (N, X)

    def sample(self, n, y=None):
        z = torch.randn(n, Z_DIM, dtype=torch.float64)
        return z @ self.W.T + self.offset(y) + self.s * torch.randn(n, X_DIM, dtype=torch.float64)

    def exact_log_px(self, x, y=None):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(X_DIM, dtype=torch.float64)
        return dist.MultivariateNormal(self.offset(y), cov).log_prob(x)  # (N,)

    def post_loc(self, x, y=None):
        return (x - self.offset(y)) @ self.W @ self.post_cov / self.s**2  # (N, Z)

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.offset(y), self.s).to_event(1), obs=x)

    def exact_guide(self, x, y=None):
        scale_tril = torch.linalg.cholesky(self.post_cov)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.post_loc(x, y), scale_tril=scale_tril))

    def worse_guide(self, x, y=None):
        """Mean-field, shifted by half a posterior sd and 1.5 times too wide: weights of finite variance."""
        sd = self.post_cov.diagonal().sqrt()  # (Z,)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.post_loc(x, y) + 0.5 * sd, 1.5 * sd).to_event(1))


@pytest.fixture
def lg():
    return LinearGaussian()


@pytest.fixture
def x(lg):
    return lg.sample(NUM_DATA)


@pytest.mark.parametrize("num_samples", [1, 2, 7, 50, 300])
def test_exact_posterior_gives_exact_value_for_every_k(lg, x, num_samples):
    result = log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=num_samples)
    exact = lg.exact_log_px(x)
    assert isinstance(result, MarginalLikelihood)
    assert result.log_px.shape == (NUM_DATA,)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=EXACT_ATOL)
    assert set(result.bounds) == {k for k in (1, 5, 50, num_samples) if k <= num_samples}
    for bound in result.bounds.values():
        torch.testing.assert_close(bound, exact, rtol=0, atol=EXACT_ATOL)
    # All weights equal: ESS = K up to rounding.
    torch.testing.assert_close(result.ess, torch.full_like(result.ess, num_samples), rtol=1e-9, atol=0)


def test_worse_guide_bounds_are_ordered_below_exact(lg, x):
    """Data-set means: ELBO < IWAE-5 < IWAE-50 < exact, and log p̂ within 0.01 nats of exact.

    With this guide the gaps are about 2.6, 0.3 and 0.02 nats; the Monte Carlo
    standard errors of the means (K = 5000, 40 datapoints, seed 0) are below 0.003.
    """
    result = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=5000)
    exact = lg.exact_log_px(x).mean().item()
    elbo, iwae5, iwae50 = (result.bounds[k].mean().item() for k in (1, 5, 50))
    assert elbo < iwae5 < iwae50 < exact
    assert abs(result.log_px.mean().item() - exact) < 0.01
    assert (result.ess > 1).all() and (result.ess < 5000).all()
    frame = result.to_frame()
    assert list(frame.columns) == [
        "elbo", "iwae_5", "iwae_50", "iwae_K", "log_px", "log_px_stderr",
        "ess_mean", "ess_min", "pareto_k_max", "num_samples", "num_data",
    ]  # fmt: skip
    assert frame.loc[0, "num_samples"] == 5000 and frame.loc[0, "num_data"] == NUM_DATA
    assert frame.loc[0, "log_px_stderr"] == pytest.approx(result.log_px.std().item() / math.sqrt(NUM_DATA))


def test_nested_groups_order_the_bounds_for_every_datapoint(lg, x):
    """Groups of 5 inside groups of 50 inside K = 500: ELBO <= IWAE-5 <= IWAE-50 <= log p̂ per datapoint.

    Jensen's inequality on each group's mean weight, so it holds for every draw
    (up to float rounding, 1e-12 nats).
    """
    result = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=500, max_memory_bytes=100_000)
    assert result.chunk_shape[0] < 500  # groups straddle the sample chunks
    b = result.bounds
    for low, high in ((b[1], b[5]), (b[5], b[50]), (b[50], result.log_px)):
        assert (low <= high + 1e-12).all()


def test_worse_guide_converges_as_k_grows(lg, x):
    """Mean absolute error over datapoints falls with K (3.9, 0.4, 0.13, 0.05, 0.009 nats with seed 0).

    At K = 20000 (ESS about 5800) each estimate's Monte Carlo sd is about 0.013
    nats: the mean absolute error is below 0.02 and the mean error below
    0.006 (3 standard errors over 40 datapoints).
    """
    exact = lg.exact_log_px(x)
    errors = []
    for num_samples in (1, 10, 100, 1000, 20000):
        result = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=num_samples)
        errors.append((result.log_px - exact).abs().mean().item())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.02, errors
    assert abs((result.log_px - exact).mean().item()) < 0.006


@pytest.mark.parametrize(
    "chunks", [[237], [1] * 237, [50] * 4 + [37], [3, 100, 4, 49, 81], [7] * 33 + [6]]
)
def test_streaming_summaries_do_not_depend_on_chunking(chunks):
    """Fed the same (K, N) log-weights in any chunks, the summaries equal the direct formulas (1e-12)."""
    g = torch.Generator().manual_seed(1)
    log_w = 30 * torch.randn(237, 11, generator=g, dtype=torch.float64)  # (K, N), spread 30 nats
    log_w[:, 3] = -math.inf  # a datapoint whose first few weights vanish does not break the sums
    log_w[10:, 3] = torch.randn(227, generator=g, dtype=torch.float64)
    acc = _StreamingWeights((1, 5, 50), tail_size=_tail_size(237) + 1)
    for piece in log_w.split(chunks):
        acc.update(piece)
    out = acc.finish()
    K = log_w.shape[0]
    torch.testing.assert_close(out["log_px"], torch.logsumexp(log_w, 0) - math.log(K), rtol=1e-12, atol=1e-12)
    w = torch.exp(log_w - log_w.max(0).values)
    torch.testing.assert_close(out["ess"], w.sum(0) ** 2 / (w**2).sum(0), rtol=1e-12, atol=0)
    for k in (1, 5, 50):
        groups = log_w[: K // k * k].reshape(K // k, k, -1)
        direct = (torch.logsumexp(groups, 1) - math.log(k)).mean(0)
        torch.testing.assert_close(out[f"iwae_{k}"][torch.arange(11) != 3], direct[torch.arange(11) != 3], rtol=1e-12, atol=1e-12)
    top = log_w.sort(0, descending=True).values[: _tail_size(K) + 1]
    torch.testing.assert_close(out["tail"], top, rtol=0, atol=0)


def test_exact_posterior_chunked_equals_unchunked(lg, x):
    """A budget of a dozen (sample, datapoint) cells per chunk gives the same estimate (1e-10 nats)."""
    x = x[:10]
    whole = log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=60)
    tiny = log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=60, max_memory_bytes=5000)
    assert whole.chunk_shape == (60, 10) and tiny.chunk_shape[0] < 60 and tiny.chunk_shape[1] == 1
    for k in whole.bounds:
        torch.testing.assert_close(tiny.bounds[k], whole.bounds[k], rtol=0, atol=EXACT_ATOL)
    torch.testing.assert_close(tiny.ess, whole.ess, rtol=1e-9, atol=0)


def test_a_datapoint_with_more_weights_than_one_summary_update_is_still_exact(lg, x):
    """K = 1.5 x 2^20 log-weights per datapoint are summarized in more than one update (each takes at
    most 2^20), chunk by chunk; with the exact posterior as guide every bound is log p(x) and the ESS is K."""
    x = x[:2]
    num_samples = 3 * 2**19
    result = log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=num_samples, max_memory_bytes=2**24)
    assert result.chunk_shape[0] < num_samples and result.chunk_shape[1] == 1
    exact = lg.exact_log_px(x)
    for k, bound in result.bounds.items():
        torch.testing.assert_close(bound, exact, rtol=0, atol=1e-8, msg=f"IWAE-{k}")
    torch.testing.assert_close(result.ess, torch.full_like(result.ess, num_samples), rtol=1e-9, atol=0)


def test_chunk_shapes_fit_the_budget_and_split_samples_evenly():
    cell = 14_000  # bytes per (sample, datapoint), about the 784-pixel VAE's
    assert _chunk_shape(5000, 10_000, cell, 64 * 2**20) == (2500, 1)  # 4793 cells: 2 x 2500, not 4793 + 207
    assert _chunk_shape(5000, 10_000, cell, 256 * 2**20) == (5000, 3)
    assert _chunk_shape(1000, 3, cell, 256 * 2**20) == (1000, 3)  # never more datapoints than there are
    assert _chunk_shape(7, 2, 10**9, 1) == (1, 1)  # at least one cell, whatever the budget
    for k in (1, 999, 5000, 12_345):
        for budget in (10**5, 10**6, 64 * 2**20):
            k_chunk, n_chunk = _chunk_shape(k, 50, cell, budget)
            assert k_chunk * n_chunk * cell <= max(budget, cell)
            chunks = math.ceil(k / k_chunk)
            assert chunks * k_chunk - k < chunks  # the last chunk is short by less than one per chunk


def test_worse_guide_chunked_matches_unchunked_in_distribution(lg, x):
    """Different chunkings draw different samples, so they agree within Monte Carlo error.

    Paired over the 40 datapoints, the mean difference of log p̂ and of each
    bound is within 4 standard errors of zero and within 0.1 nats (K = 2000:
    the ELBO's paired standard error is about 0.02 nats). The exact-arithmetic
    part of chunk invariance is the streaming test above.
    """
    done = []
    whole = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=2000)
    chunked = log_marginal_likelihood(
        lg.model, lg.worse_guide, x, num_samples=2000, max_memory_bytes=200_000, progress=done.append
    )
    assert chunked.chunk_shape != whole.chunk_shape
    assert sum(done) == 2000 * NUM_DATA
    for k in (1, 5, 50, 2000):
        diff = chunked.bounds[k] - whole.bounds[k]  # (N,)
        assert abs(diff.mean().item()) < min(0.1, 4 * diff.std().item() / math.sqrt(NUM_DATA)), k


def test_same_seed_same_chunking_is_reproducible(lg, x):
    pyro.set_rng_seed(3)
    first = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=100)
    pyro.set_rng_seed(3)
    second = log_marginal_likelihood(lg.model, lg.worse_guide, x, num_samples=100)
    assert torch.equal(first.log_px, second.log_px) and torch.equal(first.ess, second.ess)
    torch.testing.assert_close(first.pareto_k, second.pareto_k, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("validate", [False, True])
def test_checks_run_on_the_probe_and_in_the_chunks_only_when_asked(x, validate):
    from pyro.infer.util import is_validation_enabled

    seen = []

    def model(x):
        seen.append(is_validation_enabled())
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc = z.unsqueeze(-1).expand(z.shape + x.shape[1:])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pyro.validation_enabled(True):
        log_marginal_likelihood(model, guide, x, num_samples=20, max_memory_bytes=1, validate=validate)
        assert is_validation_enabled()  # the global setting is back
    seen = seen[validate:]  # validate=True first checks all observed values against their support, in one pass
    assert len(seen) == 1 + 20 * x.shape[0]  # the probe, then chunks of one sample and one datapoint
    assert seen[0] and all(flag == validate for flag in seen[1:])


def test_conditional_model_with_extra_argument(lg):
    """log p(x | y) = log N(x; b + V y, W W^T + s^2 I); y (N, Y) is sliced with x."""
    y = torch.randn(NUM_DATA, Y_DIM, dtype=torch.float64)
    x = lg.sample(NUM_DATA, y)
    for budget, n in ((10**9, NUM_DATA), (2000, 8)):
        result = log_marginal_likelihood(
            lg.model, lg.exact_guide, x[:n], y[:n], num_samples=20, max_memory_bytes=budget
        )
        torch.testing.assert_close(result.log_px, lg.exact_log_px(x[:n], y[:n]), rtol=0, atol=EXACT_ATOL)


class TwoLatent:
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2, t^2 I), x | z1 ~ N(W z1 + b, s^2 I); guide q(z1 | x) q(z2 | z1).

    p(x) = N(b, W (A A^T + t^2 I) W^T + s^2 I). The exact posterior factorizes as
    p(z1 | x) p(z2 | z1) since z2 is independent of x given z1.
    """

    def __init__(self):
        g = torch.Generator().manual_seed(2)
        kw = dict(generator=g, dtype=torch.float64)
        self.A, self.W, self.b = torch.randn(Z_DIM, 2, **kw), torch.randn(X_DIM, Z_DIM, **kw), torch.randn(X_DIM, **kw)
        self.t, self.s = 0.7, 0.5
        eye_z, eye_2 = torch.eye(Z_DIM, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
        self.prior_cov1 = self.A @ self.A.T + self.t**2 * eye_z  # (Z, Z)
        self.cov1 = torch.linalg.inv(torch.linalg.inv(self.prior_cov1) + self.W.T @ self.W / self.s**2)
        self.cov2 = torch.linalg.inv(eye_2 + self.A.T @ self.A / self.t**2)  # (2, 2)

    def exact_log_px(self, x):
        cov = self.W @ self.prior_cov1 @ self.W.T + self.s**2 * torch.eye(X_DIM, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T, self.t).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc1 = (x - self.b) @ self.W @ self.cov1 / self.s**2
            z1 = pyro.sample("z1", dist.MultivariateNormal(loc1, scale_tril=torch.linalg.cholesky(self.cov1)))
            loc2 = z1 @ self.A @ self.cov2 / self.t**2
            pyro.sample("z2", dist.MultivariateNormal(loc2, scale_tril=torch.linalg.cholesky(self.cov2)))


def test_two_latent_sites():
    two = TwoLatent()
    z1 = torch.randn(NUM_DATA, 2, dtype=torch.float64) @ two.A.T + two.t * torch.randn(NUM_DATA, Z_DIM, dtype=torch.float64)
    x = z1 @ two.W.T + two.b + two.s * torch.randn(NUM_DATA, X_DIM, dtype=torch.float64)
    for budget, n in ((10**9, NUM_DATA), (3000, 8)):
        result = log_marginal_likelihood(two.model, two.guide, x[:n], num_samples=30, max_memory_bytes=budget)
        torch.testing.assert_close(result.log_px, two.exact_log_px(x[:n]), rtol=0, atol=EXACT_ATOL)


def test_bernoulli_likelihood_against_quadrature():
    """z ~ N(0, 1), x_d | z ~ Bernoulli(sigmoid(a_d z + c_d)), D = 8, pixels in an inner plate.

    Exact log p(x) by the trapezoid rule on 4001 points of [-12, 12] (it agrees
    with 32001 points to 1e-10). The guide is N(posterior mean, (1.5 posterior
    sd)^2): wider than the posterior, so the weights are bounded (Pareto k-hat
    below 0) and the ESS is about 0.8 K. K = 20000: each estimate's Monte Carlo
    sd is about 0.004 nats; all 12 lie within 0.015 nats of exact.
    """
    g = torch.Generator().manual_seed(4)
    a = 2 * torch.randn(8, generator=g, dtype=torch.float64)
    c = torch.randn(8, generator=g, dtype=torch.float64)
    z_true = torch.randn(12, 1, generator=g, dtype=torch.float64)
    x = torch.bernoulli(torch.sigmoid(z_true * a + c), generator=g)  # (N, D)

    nodes = torch.linspace(-12, 12, 4001, dtype=torch.float64)  # (Q,)
    log_prior = dist.Normal(0.0, 1.0).log_prob(nodes) + math.log(nodes[1] - nodes[0])  # (Q,)
    log_lik = dist.Bernoulli(logits=nodes[:, None, None] * a + c).log_prob(x).sum(-1)  # (Q, N)
    log_joint = log_lik + log_prior[:, None]  # (Q, N)
    exact = torch.logsumexp(log_joint, 0)  # (N,)
    post = torch.softmax(log_joint, 0)  # (Q, N)
    post_mean = (post * nodes[:, None]).sum(0)  # (N,)
    post_sd = ((post * nodes[:, None] ** 2).sum(0) - post_mean**2).sqrt()  # (N,)

    def model(x, z_loc, z_scale):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))  # (..., N, 1, 1)
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=z[..., 0] * a + c), obs=x)

    def guide(x, z_loc, z_scale):  # per-datapoint guide parameters (N,) ride along as arguments
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(z_loc[:, None, None], z_scale[:, None, None]).to_event(1))

    result = log_marginal_likelihood(model, guide, x, post_mean, 1.5 * post_sd, num_samples=20000)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=0.015)
    assert (result.pareto_k < 0).all()


def _pareto_k_one_at_a_time(tail):
    """The per-datapoint loop over pyro.ops.stats.fit_generalized_pareto that _pareto_k vectorizes."""
    out = torch.full((tail.shape[1],), math.nan, dtype=torch.float64)
    rel = tail - tail[0]
    cutoff = torch.clamp(rel[-1], min=math.log(1e-15))
    for i in range(tail.shape[1]):
        exceed = rel[:-1, i][rel[:-1, i] > cutoff[i]]
        if exceed.numel() >= 10 and torch.isfinite(exceed).all():
            out[i] = fit_generalized_pareto(exceed.exp() - cutoff[i].exp())[0]
    return out


def test_vectorized_pareto_k_equals_pyros_fit_column_by_column():
    """Light and heavy tails, tail sizes of K = 50 to 5000, ties and -inf: the same k-hat to 1e-10."""
    torch.manual_seed(0)
    for k in (50, 1000, 5000):
        m = _tail_size(k) + 1
        columns = [
            torch.randn(k, 40, dtype=torch.float64),  # light tails: k-hat < 0.5
            3 * torch.randn(k, 40, dtype=torch.float64),
            torch.distributions.StudentT(1.5).sample((k, 40)).double().abs().log() * 4,  # heavy tails
        ]
        log_w = torch.cat(columns, 1)
        log_w[:, 0] = 0.0  # all weights tied: no exceedance, NaN
        log_w[: k // 2, 1] = -math.inf  # half the weights zero
        log_w[:, 2] = torch.where(torch.arange(k) < 12, 5.0, -50.0).double()  # 12 equal peaks: too few above the cutoff
        tail = log_w.sort(0, descending=True).values[:m]
        expected = _pareto_k_one_at_a_time(tail)
        got = _pareto_k(tail, columns_per_step=7)  # several steps, a short last one
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, equal_nan=True)
        assert torch.isnan(got[0]) and torch.isfinite(got[3:]).all()


def _model_independent_of_z(x):
    """z ~ N(0, 1), x ~ N(0, 1) per datapoint: the posterior of z is its prior."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def _gaussian_guide(scale):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), scale))

    return guide


def test_pareto_k_of_a_too_narrow_gaussian_guide():
    """Target N(0, 1), proposal N(0, 1/2): w ~ exp(z^2 / 2) has tail index k = 1 - 1/2 = 0.5.

    The data do not depend on z, so the posterior is the prior. K = 10000, 20
    datapoints: the median k-hat lies within 0.1 of 0.5; an exact guide's ESS
    would be K, this one's is well below.
    """
    guide = _gaussian_guide(math.sqrt(0.5))
    result = log_marginal_likelihood(_model_independent_of_z, guide, torch.zeros(20, dtype=torch.float64), num_samples=10000)
    assert abs(result.pareto_k.median().item() - 0.5) < 0.1
    assert (result.ess < 0.9 * 10000).all()


def test_pareto_k_is_nan_without_a_tail():
    tail = torch.zeros(_tail_size(20) + 1, 3, dtype=torch.float64)  # K = 20: M = 4 < 10
    assert torch.isnan(_pareto_k(tail)).all()


def test_equal_weights_give_nan_pareto_k_not_an_error():
    """All K log-weights equal (x does not depend on z; the guide is the prior): no exceedances to fit.

    Float rounding can leave a few weights above the rest, so only the exactly equal tail is all NaN.
    """

    x = torch.tensor([0.0, 1.0, -2.0])
    result = log_marginal_likelihood(_model_independent_of_z, _gaussian_guide(1.0), x, num_samples=100)  # tail M = 20 >= 10
    torch.testing.assert_close(result.log_px.float(), dist.Normal(0.0, 1.0).log_prob(x))
    torch.testing.assert_close(result.ess, torch.full((3,), 100.0, dtype=result.ess.dtype))
    assert torch.isnan(_pareto_k(torch.zeros(21, 3, dtype=torch.float64))).all()  # exactly equal: nothing to fit


# Clear errors.


def test_global_latent_outside_data_plate_is_an_error(x):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(X_DIM, dtype=x.dtype), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.zeros(X_DIM, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(ValueError, match="'mu' of the guide is outside the plate 'data'|'mu' of the model is outside"):
        log_marginal_likelihood(model, guide, x, num_samples=3)


def test_guide_missing_a_latent_site_is_an_error(x):
    two = TwoLatent()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"does not sample the model's latent site\(s\) \['z2'\]"):
        log_marginal_likelihood(two.model, guide, x, num_samples=3)


def test_guide_with_a_site_the_model_lacks_is_an_error(lg, x):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(lg.post_loc(x), 1.0).to_event(1))
            pyro.sample("u", dist.Normal(torch.zeros_like(x[:, 0]), 1.0))

    with pytest.raises(ValueError, match=r"samples site\(s\) \['u'\] that the model does not have"):
        log_marginal_likelihood(lg.model, guide, x, num_samples=3)


def test_missing_data_plate_is_an_error(lg, x):
    with pytest.raises(ValueError, match="No plate named 'batch'"):
        log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=3, plate_name="batch")


def test_plate_of_another_size_than_the_first_argument_is_an_error(lg, x):
    def model(w, x):
        lg.model(x)

    def guide(w, x):
        lg.exact_guide(x)

    with pytest.raises(ValueError, match="must equal dim 0 of the first tensor argument"):
        log_marginal_likelihood(model, guide, torch.ones(7), x, num_samples=3)


def test_bad_arguments_are_errors(lg, x):
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        log_marginal_likelihood(lg.model, lg.exact_guide, x, num_samples=0)
    with pytest.raises(ValueError, match="needs a tensor argument"):
        log_marginal_likelihood(lg.model, lg.exact_guide, num_samples=3)
