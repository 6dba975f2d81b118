"""Active units of a guide's latent sites (Burda, Grosse & Salakhutdinov 2016, section 5.2).

A latent unit u is active when A_u = Var_x(E_{q(u|x)}[u]) > 0.01 over a data
set: the guide's mean of the unit moves with the datapoint. For a site whose
guide distribution depends on other latent sites (z2 | z1 in a hierarchical
VAE), E_q[u | x] averages that distribution's mean over draws of the sites
it depends on; for a site conditioned on x only it is the exact mean.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, section 5.2 (definition of A_u and threshold 10^-2).
"""

from __future__ import annotations

from typing import Callable

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pplvae.data.batches import check_finite

__all__ = ["active_units", "latent_mean_variances"]

#: Burda et al.'s threshold on Var_x(E_q[u | x]).
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def latent_mean_variances(
    guide: Callable, *args, num_samples: int = 10, batch_size: int = 1000
) -> dict[str, torch.Tensor]:
    """Var over datapoints of E_q[z_u | x] for every latent site of ``guide``.

    Args:
        guide: a guide whose sample sites sit in a plate over the datapoints,
            with event shape (dim,) per datapoint.
        *args: the guide's arguments; tensors with the datapoints along dim 0
            (e.g. ``model.batch_args(x, labels)``), sliced in chunks of ``batch_size``.
        num_samples: guide runs per datapoint averaged into E_q[z_u | x]
            (the mean of each site's distribution is averaged, so a site that
            depends on x only is exact with any number). A distribution
            without a closed-form ``mean`` (a normalizing flow) contributes
            its draws instead: a Monte Carlo mean, whose noise adds about
            Var_q(z_u | x) / num_samples to the variance. Likewise for a
            site that depends on another latent site: that site's draws add
            their noise, so few draws overcount active units (a barely
            trained two-layer VAE: 19 active z2 units with 2 draws, none
            with 10); 100 is safe.

    Returns:
        site name -> (dim,) variances over the N datapoints (population
        variance, in squared latent units), float64.

    Raises:
        ValueError: ``num_samples`` < 1, fewer than two datapoints, or NaN or
            infinite values in a tensor argument (the rows named).
    """
    n = args[0].shape[0]
    if num_samples < 1 or n < 2:
        raise ValueError(f"Need num_samples >= 1 and at least 2 datapoints, got {num_samples} and {n}.")
    for i, value in enumerate(args):
        if torch.is_tensor(value):
            check_finite(value, f"argument {i}")
    means: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, batch_size):
        chunk = [a[start : start + batch_size] if torch.is_tensor(a) and a.shape[:1] == (n,) else a for a in args]
        total: dict[str, torch.Tensor] = {}
        for _ in range(num_samples):
            trace = poutine.trace(poutine.block(guide, hide_types=["param"])).get_trace(*chunk)
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
                    try:
                        site_mean = site["fn"].mean.double()  # (B, dim)
                    except NotImplementedError:  # no closed-form mean (a flow): average the draws
                        site_mean = site["value"].double()
                    total[name] = total.get(name, 0) + site_mean
        for name, site_total in total.items():
            means.setdefault(name, []).append(site_total / num_samples)
    return {name: torch.cat(chunks).var(dim=0, unbiased=False) for name, chunks in means.items()}


def active_units(
    guide: Callable, *args, threshold: float = ACTIVE_THRESHOLD, num_samples: int = 10, batch_size: int = 1000
) -> dict[str, int]:
    """Number of active units per latent site: those with Var_x(E_q[z_u | x]) > ``threshold`` ([1]).

    Arguments as for :func:`latent_mean_variances`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x[:, :2], 1.0).to_event(1))
        >>> x = torch.stack([torch.linspace(-1, 1, 100), torch.zeros(100)], dim=-1)  # z_0 moves, z_1 does not
        >>> active_units(guide, x)
        {'z': 1}
    """
    variances = latent_mean_variances(guide, *args, num_samples=num_samples, batch_size=batch_size)
    return {name: int((variance > threshold).sum()) for name, variance in variances.items()}
