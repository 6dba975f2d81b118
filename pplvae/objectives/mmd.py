"""Maximum mean discrepancy and the MMD-VAE (InfoVAE) objective.

InfoVAE (Zhao et al. 2019, eq. 6) maximizes, per datapoint,

    E_q[log p(x|z)] - (1 - alpha) KL(q(z|x) || p(z)) - (alpha + lambda - 1) D(q(z) || p(z))

where q(z) = E_{p_data(x)} q(z|x) is the aggregate posterior. We implement the
``alpha = 1`` member with D = MMD^2, the "MMD-VAE" of Zhao et al.:

    L_MMD(x_1..x_N) = sum_n E_q[log p(x_n|z_n)] - N * lambda * MMD^2(q(z), p(z))

summed over a minibatch of N datapoints. The per-datapoint KL is gone; the
latent term compares the minibatch of codes z_n ~ q(z|x_n) (a sample of the
aggregate posterior) with N draws from the prior. The factor N makes
``lambda`` a per-datapoint weight: dividing by N gives
``mean log p(x|z) - lambda * MMD^2``, independent of the batch size.

MMD^2 is estimated with the unbiased U-statistic of Gretton et al. (2012,
Lemma 6, MMD_u^2), which is 0 in expectation when both samples come from one
distribution (it can then be slightly negative).

Kernels, with bandwidth (length scale) s, ``r = ||a - b||`` and d the latent
dimension; default ``s = sqrt(d)``, so that ``2 s^2 = 2 d = E||z - z'||^2``
for z, z' ~ N(0, I_d), the typical distance under the standard normal prior:

* ``"gaussian"``: k(a, b) = exp(-r^2 / (2 s^2));
* ``"imq"`` (inverse multiquadratic): k(a, b) = C / (C + r^2) with
  C = 2 s^2, which for the default s is C = 2 d, the choice of Tolstikhin
  et al. (2018, sec. 4) for a N(0, I_d) prior.

Why not :class:`pyro.infer.Trace_MMD`: it treats only the *particle*
dimension as the sample dimension and flattens the whole minibatch of codes
into one vector, so it compares the joint of N codes across particles rather
than the aggregate posterior across datapoints, which is what InfoVAE needs.

References:

[1] Zhao, Song & Ermon (2019), InfoVAE: Balancing Learning and Inference in
    Variational Autoencoders, AAAI (arXiv:1706.02262).
[2] Gretton et al. (2012), A Kernel Two-Sample Test, JMLR 13.
[3] Tolstikhin et al. (2018), Wasserstein Auto-Encoders, ICLR.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan

from pplvae.objectives.terms import kl_term, latent_sites, reconstruction
from pplvae.objectives.warmup import FixedBeta

__all__ = ["KERNELS", "kernel_matrix", "mmd", "MMD_VAE"]

KERNELS = ("gaussian", "imq")


def kernel_matrix(x, y, kernel: str = "gaussian", bandwidth: float | None = None):
    """Gram matrix ``K[i, j] = k(x_i, y_j)``.

    :param x: tensor of shape ``(n, d)``.
    :param y: tensor of shape ``(m, d)``.
    :param kernel: ``"gaussian"`` or ``"imq"`` (see the module docstring).
    :param bandwidth: length scale s > 0; default ``sqrt(d)``.
    :returns: tensor of shape ``(n, m)``, values in (0, 1].
    :raises ValueError: for an unknown kernel, a non-positive bandwidth, or
        inputs that are not matrices with the same number of columns.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) inputs, got {tuple(x.shape)} and {tuple(y.shape)}")
    if bandwidth is None:
        bandwidth = math.sqrt(x.shape[1])
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    # squared distances, exact at zero (no sqrt, so gradients stay finite)
    sq_dist = (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1) - 2 * x @ y.T).clamp_min(0)  # (n, m)
    two_s2 = 2.0 * bandwidth**2
    if kernel == "gaussian":
        return torch.exp(-sq_dist / two_s2)
    if kernel == "imq":
        return two_s2 / (two_s2 + sq_dist)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def mmd(x, y, kernel: str = "gaussian", bandwidth: float | None = None, unbiased: bool = True):
    """Squared maximum mean discrepancy between the samples ``x`` and ``y``.

    ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)`` (Gretton et al. 2012,
    Lemma 6). The unbiased estimate leaves out the diagonals ``i = j`` of the
    within-sample terms; the biased (V-statistic) estimate keeps them and is
    always ``>= 0``.

    :param x: tensor of shape ``(n, d)``, n >= 2 if unbiased.
    :param y: tensor of shape ``(m, d)``, m >= 2 if unbiased.
    :param kernel: ``"gaussian"`` or ``"imq"``.
    :param bandwidth: kernel length scale s; default ``sqrt(d)``.
    :param unbiased: U-statistic (default) or V-statistic.
    :returns: scalar tensor (squared RKHS norm; unitless, at most 2).
    :raises ValueError: as :func:`kernel_matrix`, or if a sample has fewer
        than 2 rows for the unbiased estimate.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(500, 2, generator=g)
    >>> abs(mmd(x, torch.randn(500, 2, generator=g)).item()) < 0.01
    True
    >>> mmd(x, torch.randn(500, 2, generator=g) + 3.0).item() > 0.5
    True
    """
    n, m = x.shape[0], y.shape[0]
    k_xx = kernel_matrix(x, x, kernel, bandwidth)  # (n, n)
    k_yy = kernel_matrix(y, y, kernel, bandwidth)  # (m, m)
    k_xy = kernel_matrix(x, y, kernel, bandwidth)  # (n, m)
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("the unbiased MMD estimate needs at least 2 points per sample")
        xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
        yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = k_xx.mean(), k_yy.mean()
    return xx + yy - 2 * k_xy.mean()


def _rows_along_data_plate(site) -> torch.Tensor:
    """A site's value as ``(N, D)``: one row per element of the "data" plate."""
    for frame in site["cond_indep_stack"]:
        if frame.name == "data":
            value = site["value"]
            dim = frame.dim - site["fn"].event_dim
            return value.movedim(dim, 0).reshape(value.shape[dim], -1)
    raise ValueError(
        f"latent site {site['name']!r} is not inside pyro.plate('data', N); "
        "the MMD objective compares codes across the data plate"
    )


class MMD_VAE(FixedBeta, ELBO):
    """The MMD-VAE loss ``-L_MMD`` (see the module docstring), usable with
    :class:`~pyro.infer.SVI` or through ``differentiable_loss``.

    One guide draw per datapoint; the prior sample comes from running the
    model on its own (ancestral sampling, as :class:`pyro.infer.Trace_MMD`
    does), so hierarchical priors are sampled correctly. The MMD^2 of each
    latent site is computed separately and the terms are added.

    :param mmd_weight: lambda >= 0, the per-datapoint weight of MMD^2. The
        default 1000 is our choice, not the paper's: MMD^2 is at most 2 with
        these kernels, so lambda * MMD^2 can reach the size of a MNIST VAE's
        KL term (tens of nats); smaller weights barely constrain q(z).
    :param kernel: ``"gaussian"`` or ``"imq"``.
    :param bandwidth: kernel length scale s; default ``sqrt(D)`` with D the
        flattened size of one datapoint's code at that site.
    :param unbiased: use the unbiased MMD^2 estimate.
    :raises ValueError: for a negative weight or an unknown kernel.

    ``beta`` is fixed at 1 (there is no KL term); setting another value raises
    ``ValueError``.
    """

    objective_name = "the MMD objective"

    def __init__(
        self,
        mmd_weight: float = 1000.0,
        kernel: str = "gaussian",
        bandwidth: float | None = None,
        unbiased: bool = True,
        max_plate_nesting: float = float("inf"),
    ) -> None:
        if not mmd_weight >= 0:
            raise ValueError(f"mmd_weight must be >= 0, got {mmd_weight}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
        super().__init__(num_particles=1, max_plate_nesting=max_plate_nesting)
        self.mmd_weight = float(mmd_weight)
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.unbiased = unbiased

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _terms(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        prior_trace = poutine.trace(model).get_trace(*args, **kwargs)
        latent = torch.zeros(())
        for name in latent_sites(model_trace):
            z_q = _rows_along_data_plate(guide_trace.nodes[name])  # (N, D)
            z_p = _rows_along_data_plate(prior_trace.nodes[name])  # (N, D)
            latent = latent + z_q.shape[0] * mmd(z_q, z_p, self.kernel, self.bandwidth, self.unbiased)
        return reconstruction(model_trace), latent, (model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-(sum_n log p(x_n|z_n) - N * lambda * MMD^2)`` in nats-scale units,
        summed over the minibatch, differentiable."""
        recon, latent, _ = self._terms(model, guide, args, kwargs)
        loss = -(recon - self.mmd_weight * latent)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)

    @torch.no_grad()
    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The objective split into its terms, from one set of draws.

        :returns: scalar tensors summed over the minibatch:
            ``reconstruction`` = sum log p(x|z) (nats);
            ``mmd`` = N * MMD^2 (so ``mmd / N`` is the minibatch MMD^2,
            unweighted);
            ``total`` = ``reconstruction - mmd_weight * mmd``, the objective,
            whose negative ``differentiable_loss`` returns for the same draws;
            ``kl`` = the one-draw KL(q(z|x) || p(z)) (nats), not part of the
            objective, reported so that ``reconstruction - kl`` gives the
            ELBO of an MMD-trained model.
        """
        recon, latent, (model_trace, guide_trace) = self._terms(model, guide, args, kwargs)
        total = recon - self.mmd_weight * latent
        return {"reconstruction": recon, "mmd": latent, "kl": kl_term(model_trace, guide_trace), "total": total}
