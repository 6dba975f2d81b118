"""Pyro's ``Trace_ELBO`` without host syncs or trace bookkeeping, for reparameterized guides.

For a guide whose every sample site is reparameterized, the gradient estimator
of ``Trace_ELBO`` reduces to the pathwise one (Kingma & Welling 2013, eq. 7;
Wingate & Weber 2013): the surrogate loss *is* the loss,

    -ELBO = -sum_sites log p(x, z) + sum_sites log q(z | x),   z ~ q (reparameterized),

each site's log-density scaled and masked as Pyro scales and masks it (plates
with subsampling, ``poutine.scale``, ``poutine.mask``). ``Trace_ELBO`` computes
this number the general way: it records both programs in ``Trace`` objects,
copies them, prunes them, computes score-function parts, and calls
``.item()`` on every site's log-density and on the total (a host-device sync
each on a GPU) before adding them up. :class:`FastTrace_ELBO` runs the guide
and the model once each under a single light handler that substitutes the
guide's draws into the model and adds up the log-densities as tensors, with
the same value and gradients (up to float rounding) and no sync.

Each site's sum is taken in as few operators as its distribution allows,
since every one of them is also a node that backward visits. Bernoulli and
Normal sites use :func:`pplvae.fast_log_prob.log_prob_sum` (the fused
cross-entropy; one sum). A guide's Normal site (also ``.to_event(n)``) is
drawn by the handler as ``Normal.rsample`` draws it, z = loc + scale * eps with
eps ~ N(0, I) from torch's generator, and scored at its own draw as

    log q(z | x) = -1/2 sum eps^2 - sum log scale - n/2 log(2 pi),

which is ``Normal.log_prob(z)`` as a function of the guide's parameters:
(z - loc) / scale = eps for every loc and scale, so the terms of
d log q / d(loc, scale) through z and directly through loc and scale,
which ``Trace_ELBO`` computes separately, cancel exactly; what is left is
the form a hand-written Gaussian VAE uses
(:func:`pplvae.fast_log_prob.normal_log_prob_sum_at_draw`).

Anything outside that case falls back to ``Trace_ELBO`` unchanged: Pyro's
validation enabled (its checks need the traces), more than one particle, or a
guide with a site that is not reparameterized, enumerated or observed (noticed
at that site, before it draws, and remembered per guide function).

References:
    [1] Kingma & Welling (2013), "Auto-Encoding Variational Bayes", section 2.4.
    [2] Wingate & Weber (2013), "Automated Variational Inference in Probabilistic Programming".
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pplvae.fast_log_prob import base_distribution, log_prob_sum, normal_log_prob_sum_at_draw


class _NotReparameterized(Exception):
    """The guide has a site the pathwise estimator does not cover."""


class _LogDensity(Messenger):
    """Adds up ``log_prob`` of every sample site, scaled and masked; optionally replays values.

    As the guide's handler (``replay=None``) it records each site's value and
    ``infer`` dict (also the subsample indices of its plates) and raises
    :class:`_NotReparameterized` at a site that is not reparameterized,
    enumerated or observed, before it draws anything there; it draws Normal
    sites itself (as the module docstring says). As the model's handler it
    substitutes the recorded values, as ``poutine.replay`` does.
    """

    def __init__(self, replay: dict | None = None):
        super().__init__()
        self.replay = replay
        self.values: dict = {}
        self.log_prob_sum: torch.Tensor | None = None
        # guide site name -> (its value, its distribution, the eps and scale the value was drawn from)
        self._standard_draws: dict = {}

    def _pyro_sample(self, msg) -> None:
        if self.replay is None:  # the guide: check before anything is drawn
            if isinstance(msg["fn"], _Subsample):
                return
            if msg["is_observed"] or msg["infer"].get("enumerate") or not msg["fn"].has_rsample:
                raise _NotReparameterized(msg["name"])
            base, _ = base_distribution(msg["fn"])
            if type(base) is dist.Normal and msg["value"] is None and not (msg["args"] or msg["kwargs"]):
                # as Normal.rsample draws: the same generator call, the same value
                eps = torch.empty(base.batch_shape, dtype=base.loc.dtype, device=base.loc.device).normal_()
                msg["value"] = base.loc + eps * base.scale
                msg["done"] = True
                self._standard_draws[msg["name"]] = (msg["value"], msg["fn"], eps, base.scale)
        elif msg["name"] in self.replay and not msg["is_observed"]:
            msg["value"], msg["infer"] = self.replay[msg["name"]]
            msg["done"] = True

    def _pyro_post_sample(self, msg) -> None:
        if self.replay is None:  # the guide: record for the model; plates' indices too
            self.values[msg["name"]] = (msg["value"], msg["infer"])
        if isinstance(msg["fn"], _Subsample):  # a plate's indices are not scored
            return
        log_prob_sum = self._site_log_prob_sum(msg)
        self.log_prob_sum = log_prob_sum if self.log_prob_sum is None else self.log_prob_sum + log_prob_sum

    def _site_log_prob_sum(self, msg) -> torch.Tensor:
        """The site's log-density, scaled and masked, summed over all its elements."""
        fn, value, scale = msg["fn"], msg["value"], msg["scale"]
        if msg["mask"] is None and isinstance(scale, (int, float)) and not (msg["args"] or msg["kwargs"]):
            drawn = self._standard_draws.pop(msg["name"], None)
            if drawn is not None and drawn[0] is value and drawn[1] is fn:  # still the handler's own draw
                total = normal_log_prob_sum_at_draw(drawn[3], drawn[2])
            else:
                total = log_prob_sum(fn, value)
            if total is not None:
                return total if scale == 1 else total * scale
        log_prob = fn.log_prob(value, *msg["args"], **msg["kwargs"])
        return scale_and_mask(log_prob, scale, msg["mask"]).sum()


class FastTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` skips the traces for reparameterized guides.

    ``differentiable_loss(model, guide, *args, **kwargs)`` returns the same
    tensor as ``Trace_ELBO().differentiable_loss`` given the same random
    draws: -ELBO in nats, summed over the minibatch (scaled by plates and
    ``poutine.scale`` as Pyro scales it), with the same gradients. It makes no
    host-device sync and builds no ``Trace``. It falls back to
    ``Trace_ELBO.differentiable_loss`` (so to Pyro's own checks and estimator)
    when validation is enabled, when ``num_particles > 1``, or when a guide
    site is not reparameterized, is enumerated or is observed. ``loss`` and
    ``loss_and_grads`` are ``Trace_ELBO``'s.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("z", dist.Normal(x / 2, 0.7))
        >>> loss = FastTrace_ELBO().differentiable_loss(model, guide, torch.tensor(1.0))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._not_reparameterized: set = set()  # guide functions seen to need the fallback

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        guide_function = getattr(guide, "__func__", guide)
        if is_validation_enabled() or self.num_particles != 1 or guide_function in self._not_reparameterized:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        guide_handler = _LogDensity()
        try:
            with guide_handler:
                guide(*args, **kwargs)
        except _NotReparameterized:
            self._not_reparameterized.add(guide_function)
            return super().differentiable_loss(model, guide, *args, **kwargs)
        model_handler = _LogDensity(replay=guide_handler.values)
        with model_handler:
            model(*args, **kwargs)
        log_q, log_p = (torch.as_tensor(0.0) if h.log_prob_sum is None else h.log_prob_sum
                        for h in (guide_handler, model_handler))
        return log_q - log_p
