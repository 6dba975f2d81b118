"""The importance-weighted (IWAE) bound as a differentiable training loss.

For K particles z_1..z_K ~ q(z|x) drawn independently per datapoint,

    L_K(x) = E[ log (1/K) sum_k p(x, z_k) / q(z_k|x) ]      (nats)

(Burda et al. 2016, eq. 8). ``L_1`` is the ELBO, ``L_K <= L_{K+1} <= log p(x)``
(their Theorem 1). Pyro implements this value as
:class:`~pyro.infer.RenyiELBO` with ``alpha = 0`` (Li & Turner 2016), but only
through ``loss`` and ``loss_and_grads``; :class:`IWAE_ELBO` adds the
``differentiable_loss`` that a plain ``torch.optim`` loop needs, computed from
the same traces and the same per-datapoint log-weights (the data plate is
kept, the log-sum-exp runs over particles per datapoint, then sums over the
minibatch). For a reparameterized guide the gradient of this surrogate is the
IWAE gradient, sum_k w~_k grad log w_k (Burda et al. eq. 14), which is what
``RenyiELBO.loss_and_grads`` back-propagates.

With ``gradient="dreg"`` the same value carries the doubly-reparameterized
gradient of Tucker et al. [3] for the guide's parameters phi,

    sum_k w~_k^2 d log w_k / d z_k  d z_k / d phi,    w~_k = w_k / sum_j w_j

([3], eq. 7), where log w_k = log p(x, z_k) - log q(z_k | x) is scored with
the guide's parameters held fixed (the score-function term, whose variance
grows with K, is dropped; its expectation is zero). The model's parameters
keep the IWAE gradient sum_k w~_k d log p(x, z_k) / d theta. The guide's
signal-to-noise ratio then grows with K instead of falling ([4], [3] fig. 1).

References:

[1] Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders,
    ICLR.
[2] Li & Turner (2016), Renyi Divergence Variational Inference, NeurIPS.
[3] Tucker, Lawson, Gu & Maddison (2019), Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives, ICLR, eq. (5)-(7).
[4] Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter
    Variational Bounds are Not Necessarily Better, ICML.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer import RenyiELBO
from pyro.infer.util import check_fully_reparametrized
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from pplvae.objectives.terms import RngNeutralPlateGuess, kl_term, log_weights, reconstruction
from pplvae.objectives.warmup import FixedBeta

__all__ = ["GRADIENTS", "IWAE_ELBO"]

#: Gradient estimators of :class:`IWAE_ELBO`: Burda et al.'s, and Tucker et al.'s doubly reparameterized one.
GRADIENTS = ("standard", "dreg")


class IWAE_ELBO(FixedBeta, RngNeutralPlateGuess, RenyiELBO):
    """:class:`~pyro.infer.RenyiELBO` at ``alpha = 0`` with a differentiable loss.

    :param num_particles: K, the number of importance samples per datapoint.
    :param vectorize_particles: draw the K particles in one vectorized pass
        (a particle plate left of the model's plates); needs a model whose
        plates are declared with ``pyro.plate``.
    :param gradient: ``"standard"`` (the IWAE gradient, [1] eq. 14) or
        ``"dreg"`` (doubly reparameterized for the guide's parameters, [3]
        eq. 7; needs a guide that is a method of a ``torch.nn.Module`` holding
        its parameters, such as ``vae.guide``). The value is the same.
    :param kwargs: passed to :class:`~pyro.infer.RenyiELBO`.
    :raises ValueError: if ``num_particles < 1`` or ``gradient`` is unknown.

    ``beta`` is fixed at 1: weighting ``log p(z) - log q(z|x)`` inside the
    importance weights does not give a bound on ``log p(x)``, so a beta other
    than 1 (including a KL warm-up) raises ``ValueError``.
    """

    objective_name = "the IWAE objective"

    def __init__(self, num_particles: int = 5, vectorize_particles: bool = True, gradient: str = "standard",
                 **kwargs):
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        self.gradient = gradient
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )


    def _traces(self, model, guide, args, kwargs):
        traces = list(self._get_traces(model, guide, args, kwargs))
        for _, guide_trace in traces:
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    check_fully_reparametrized(site)
        return traces

    def _bound(self, traces) -> torch.Tensor:
        vectorized = self.vectorize_particles and self.num_particles > 1  # as in RenyiELBO
        log_w = log_weights(traces, vectorized)  # (K, N)
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (N,)

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The K-sample bound ``L_K`` of every datapoint from one set of draws.

        :returns: tensor of shape ``(N,)``, nats per datapoint, differentiable;
            with ``gradient="dreg"`` its gradient is the DReG estimator ([3] eq. 7).
        :raises NotImplementedError: if a guide site is not reparameterized.
        :raises ValueError: ``gradient="dreg"`` with a guide that is not a
            method of a ``torch.nn.Module``.
        """
        if self.gradient == "dreg":
            return self._dreg_bound(model, guide, args, kwargs)
        return self._bound(self._traces(model, guide, args, kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """``-L_K`` summed over the minibatch (nats) after back-propagating the chosen gradient."""
        if self.gradient == "standard":
            return super().loss_and_grads(model, guide, *args, **kwargs)
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def _dreg_bound(self, model, guide, args, kwargs) -> torch.Tensor:
        """``L_K`` per datapoint (N,) whose gradient is IWAE's for the model and DReG's for the guide.

        Each guide draw z_k reaches the model and the guide's density through
        a view ``z_in``; the surrogate sum_k w~_k log w_k gives the model
        parameters sum_k w~_k d log p / d theta, and a hook on every ``z_in``
        multiplies what flows back into z_k by w~_k, so the guide parameters
        get sum_k w~_k^2 d log w_k / d z_k d z_k / d phi. log q is scored by a
        replay of the guide with detached parameters (no score-function term).
        """
        stopped = _stopped_guide(guide)
        vectorized = self.vectorize_particles and self.num_particles > 1
        if vectorized:
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            runs = [tuple(map(self._vectorized_num_particles, (model, guide, stopped)))]
        else:
            runs = [(model, guide, stopped)] * self.num_particles
        traces, inputs = [], []
        for run_model, run_guide, run_stopped in runs:
            guide_trace = prune_subsample_sites(poutine.trace(run_guide).get_trace(*args, **kwargs))
            replayed, views = Trace(), {}
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise NotImplementedError(f"DReG needs a reparameterized guide; site {name!r} is not.")
                    # A new tensor object also misses the caches of flow transforms,
                    # which hold the inverse computed with the live parameters.
                    views[name] = site["value"].view_as(site["value"])
                    site = {**site, "value": views[name]}
                replayed.add_node(name, **site)
            model_trace, stopped_trace = (
                prune_subsample_sites(poutine.trace(poutine.replay(fn, trace=replayed)).get_trace(*args, **kwargs))
                for fn in (run_model, run_stopped)
            )
            model_trace.compute_log_prob()
            stopped_trace.compute_log_prob()
            traces.append((model_trace, stopped_trace))
            inputs.append(views)
        log_w = log_weights(traces, vectorized)  # (K, N)
        w = torch.softmax(log_w.detach(), dim=0)  # (K, N) normalized weights w~_k
        for k, views in enumerate(inputs):
            w_k = w if vectorized else w[k]
            for view in views.values():
                if view.requires_grad:
                    view.register_hook(_scale_grad(w_k, view))
        surrogate = (w * log_w).sum(0)  # (N,)
        bound = torch.logsumexp(log_w.detach(), dim=0) - math.log(self.num_particles)
        return bound + surrogate - surrogate.detach()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-L_K`` summed over the minibatch (nats), differentiable.

        :raises NotImplementedError: if a guide site is not reparameterized.
        """
        return -self.bound(model, guide, *args, **kwargs).sum()

    @torch.no_grad()
    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The bound and the ELBO's split, from one set of K particles.

        :returns: scalar tensors in nats, summed over the minibatch:
            ``reconstruction`` and ``kl`` are the one-draw ELBO terms averaged
            over the K particles (so ``reconstruction - kl`` is the K-particle
            ELBO estimate); ``total`` is the IWAE bound ``L_K``, which exceeds
            ``reconstruction - kl`` by the importance-weighting gain
            (``>= 0`` in expectation).
        """
        traces = self._traces(model, guide, args, kwargs)
        recon = sum(reconstruction(m) for m, _ in traces) / self.num_particles
        kl = sum(kl_term(m, g) for m, g in traces) / self.num_particles
        return {"reconstruction": recon, "kl": kl, "total": self._bound(traces).sum()}


def _scale_grad(weights: torch.Tensor, value: torch.Tensor):
    """A tensor hook multiplying the gradient of ``value`` by ``weights`` aligned on its leading dims."""
    if value.shape[: weights.dim()] != weights.shape:
        raise NotImplementedError(
            f"DReG needs guide sites whose leading dims are (particles, datapoints) = {tuple(weights.shape)}; "
            f"got a value of shape {tuple(value.shape)}."
        )
    scale = weights.reshape(weights.shape + (1,) * (value.dim() - weights.dim())).to(value.dtype)
    return lambda grad: grad * scale


class _MethodCall(nn.Module):
    """Calls ``module.<name>``, so that ``torch.func.functional_call`` can swap the module's parameters."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.name)(*args, **kwargs)


def _stopped_guide(guide):
    """The guide with its module's parameters detached: scores log q(z | x) without the score-function term.

    :raises ValueError: if ``guide`` is not a bound method of a ``torch.nn.Module``.
    """
    module = getattr(guide, "__self__", None)
    if not isinstance(module, nn.Module):
        raise ValueError(
            "gradient='dreg' needs the guide to be a method of a torch.nn.Module holding its parameters "
            f"(such as vae.guide), got {guide!r}."
        )
    call = _MethodCall(module, guide.__name__)

    def stopped(*args, **kwargs):
        params = {f"module.{name}": p.detach() for name, p in module.named_parameters()}
        with poutine.block(hide_types=["param"]):
            return torch.func.functional_call(call, params, args, kwargs)

    return stopped
