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

Anything outside that case falls back to ``Trace_ELBO`` unchanged: Pyro's
validation enabled (its checks need the traces), more than one particle, or a
guide with a site that is not reparameterized, enumerated or observed (noticed
at that site, before it draws, and remembered per guide function).

References:
    [1] Kingma & Welling (2013), "Auto-Encoding Variational Bayes", section 2.4.
    [2] Wingate & Weber (2013), "Automated Variational Inference in Probabilistic Programming".
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample


class _NotReparameterized(Exception):
    """The guide has a site the pathwise estimator does not cover."""


class _LogDensity(Messenger):
    """Adds up ``log_prob`` of every sample site, scaled and masked; optionally replays values.

    As the guide's handler (``replay=None``) it records each site's value and
    ``infer`` dict (also the subsample indices of its plates) and raises
    :class:`_NotReparameterized` at a site that is not reparameterized,
    enumerated or observed, before it draws anything there. As the model's
    handler it substitutes the recorded values, as ``poutine.replay`` does.
    """

    def __init__(self, replay: dict | None = None):
        super().__init__()
        self.replay = replay
        self.values: dict = {}
        self.log_prob_sum: torch.Tensor | None = None

    def _pyro_sample(self, msg) -> None:
        if self.replay is None:  # the guide: check before anything is drawn
            if isinstance(msg["fn"], _Subsample):
                return
            if msg["is_observed"] or msg["infer"].get("enumerate") or not msg["fn"].has_rsample:
                raise _NotReparameterized(msg["name"])
        elif msg["name"] in self.replay and not msg["is_observed"]:
            msg["value"], msg["infer"] = self.replay[msg["name"]]
            msg["done"] = True

    def _pyro_post_sample(self, msg) -> None:
        if self.replay is None:  # the guide: record for the model; plates' indices too
            self.values[msg["name"]] = (msg["value"], msg["infer"])
        if isinstance(msg["fn"], _Subsample):  # a plate's indices are not scored
            return
        log_prob = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
        log_prob_sum = scale_and_mask(log_prob, msg["scale"], msg["mask"]).sum()
        self.log_prob_sum = log_prob_sum if self.log_prob_sum is None else self.log_prob_sum + log_prob_sum


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
