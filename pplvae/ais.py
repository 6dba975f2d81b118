"""Annealed importance sampling of log p(x) per datapoint, and bidirectional Monte Carlo brackets.

For a model p(x, z) with the datapoints in one plate, an initial distribution
q_0(z | x) (the guide, or the model's prior) and a schedule
0 = beta_0 < beta_1 < ... < beta_T = 1, AIS [1] runs C chains per datapoint
along the geometric path

    log f_t(z) = (1 - beta_t) log q_0(z | x) + beta_t log p(x, z),

starting from z ~ q_0, moving z with an HMC transition that leaves f_t
invariant at every intermediate step, and accumulating

    log w = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log q_0(z_{t-1} | x)].

E[w] = p(x), so log p̂(x) = logsumexp_c log w_c - log C is a stochastic lower
bound on log p(x) that tightens as T grows ([2], section 3; Wu et al. [3] use it
to evaluate decoder-based models). Run backwards, from an exact posterior
sample at beta = 1 down to beta = 0, the same weights estimate 1 / p(x) and
give a stochastic upper bound; for data simulated from the model the latent
draw that produced x is such a sample, so forward and reverse runs bracket
log p(x) (bidirectional Monte Carlo [2]).

The latents are every latent site of the model (real-valued, inside the data
plate), flattened per datapoint into one vector; their log-densities are read
from Pyro traces of the model and the guide run under ``poutine.condition``
inside a ``"chains"`` plate left of the model's plates, as
:func:`pplvae.log_marginal_likelihood` reads them from its particle plate. The
gradients for HMC come from one ``torch.autograd.grad`` of the summed
log-density: chains and datapoints are independent, so that gives each chain's
own gradient.

References
    [1] R. Neal (2001), "Annealed Importance Sampling", Statistics and
        Computing 11, eq. (2)-(5).
    [2] R. Grosse, Z. Ghahramani, R. Adams (2015), "Sandwiching the marginal
        likelihood using bidirectional Monte Carlo", arXiv:1511.02543,
        section 3 (reverse AIS, the sigmoidal schedule).
    [3] Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse (2017), "On the
        Quantitative Analysis of Decoder-Based Generative Models", ICLR,
        section 2.2 and appendix (HMC transitions, step size adapted toward
        an acceptance rate of 0.65).
    [4] R. Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC,
        section 5.2.3 (leapfrog).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import pandas as pd
import pyro
import torch
from pyro import poutine
from torch.distributions import constraints

from pplvae.marginal import _checked_data, _per_datapoint, _probe, _sample_sites, _slice_data

__all__ = ["AISResult", "BDMCResult", "annealed_importance_sampling", "bidirectional_monte_carlo", "beta_schedule"]

INITIALS = ("guide", "prior")
SCHEDULES = ("sigmoid", "linear")
_STEP_GROWTH = 1.02  # step size multiplied or divided by this after every transition ([3])


@dataclass
class AISResult:
    """Per-datapoint results of :func:`annealed_importance_sampling`; nats per datapoint, float64.

    Attributes:
        log_px: (N,) the estimate logsumexp_c log w_c - log C: a stochastic
            lower bound on log p(x_i) (forward), or, in ``reverse`` runs, the
            stochastic upper bound -(logsumexp_c log w_c - log C).
        log_weights: (C, N) the chains' log-weights log w (for reverse runs,
            estimates of -log p(x)).
        acceptance: (N,) HMC acceptance probability averaged over chains and steps.
        step_size: (N,) the leapfrog step size at the end of the run.
        num_steps: T, the number of annealing steps.
        num_chains: C, chains per datapoint.
        initial: ``"guide"`` or ``"prior"``, the distribution q_0 at beta = 0.
        reverse: whether the chains ran from beta = 1 to 0.
    """

    log_px: torch.Tensor
    log_weights: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_steps: int
    num_chains: int
    initial: str
    reverse: bool = False

    @property
    def num_data(self) -> int:
        """N, the number of datapoints."""
        return self.log_px.shape[0]

    @property
    def stderr(self) -> float:
        """Standard error of ``log_px.mean()`` over the data set, nats (NaN when N = 1)."""
        if self.num_data < 2:
            return float("nan")
        return (self.log_px.std() / math.sqrt(self.num_data)).item()

    def to_frame(self) -> pd.DataFrame:
        """One-row table of data-set means: ``log_px``, ``log_px_stderr``, ``acceptance_mean``,
        ``step_size_mean``, ``num_steps``, ``num_chains``, ``initial``, ``num_data``."""
        return pd.DataFrame([{
            "log_px": self.log_px.mean().item(),
            "log_px_stderr": self.stderr,
            "acceptance_mean": self.acceptance.mean().item(),
            "step_size_mean": self.step_size.mean().item(),
            "num_steps": self.num_steps,
            "num_chains": self.num_chains,
            "initial": self.initial,
            "num_data": self.num_data,
        }])


@dataclass
class BDMCResult:
    """A bidirectional Monte Carlo bracket of log p(x) on data simulated from the model ([2]).

    Attributes:
        lower: (N,) forward AIS, a stochastic lower bound on log p(x_i), nats.
        upper: (N,) reverse AIS from the exact posterior sample, a stochastic upper bound, nats.
        data: the simulated data, the tensor that replaced ``args[data_arg]``: (N, ...).
        latents: site name -> (N, ...) the latent draws that produced ``data``.
        forward, reverse: the two :class:`AISResult`.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    data: torch.Tensor
    latents: dict[str, torch.Tensor] = field(repr=False)
    forward: AISResult = field(repr=False)
    reverse: AISResult = field(repr=False)

    @property
    def width(self) -> torch.Tensor:
        """(N,) upper - lower, nats: at most about the bias of either bound."""
        return self.upper - self.lower


def beta_schedule(num_steps: int, schedule: str = "sigmoid", sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures beta_0 = 0 < ... < beta_T = 1: (T + 1,), float64.

    ``"linear"``: t / T. ``"sigmoid"`` ([2], section 6): sigmoid(delta (2t/T - 1))
    rescaled to run from 0 to 1, with delta = ``sharpness``: small steps at both
    ends, where the log-weights change fastest.

    Raises:
        ValueError: ``num_steps`` < 1 or an unknown schedule.

    Example:
        >>> beta_schedule(4, "linear")
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000], dtype=torch.float64)
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if schedule == "linear":
        return t
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def annealed_importance_sampling(
    model: Callable,
    guide: Callable,
    *args,
    num_steps: int = 500,
    num_chains: int = 16,
    initial: str = "guide",
    schedule: str = "sigmoid",
    num_leapfrog: int = 5,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    batch_size: int = 100,
    plate_name: str = "data",
    progress: Optional[Callable[[int], None]] = None,
    **kwargs,
) -> AISResult:
    """Estimate log p(x_i) for every datapoint by annealed importance sampling with HMC ([1], [3]).

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` as for
    :func:`pplvae.log_marginal_likelihood`: every sample site inside the plate
    ``plate_name``, the datapoints along dim 0 of the tensor arguments; here the
    data plate must also be the outermost plate of every latent site, and
    every latent site real-valued (the HMC state is the flattened latents).

    Each datapoint gets ``num_chains`` chains and its own leapfrog step size,
    multiplied by 1.02 after a transition whose mean acceptance probability
    over its chains exceeds ``target_accept`` and divided by 1.02 otherwise
    ([3]). Datapoints are processed ``batch_size`` at a time. Cost: about
    ``num_steps * (num_leapfrog + 1)`` gradient evaluations of model (and
    guide, with ``initial="guide"``) per chain.

    Args:
        model, guide: the model p(x, z) and the guide q(z | x).
        num_steps: T >= 1, annealing steps (HMC transitions: T - 1).
        num_chains: C >= 1, independent chains per datapoint.
        initial: q_0, ``"guide"`` (q(z | x)) or ``"prior"`` (the model's latent
            sites, which then needs no guide density; the guide still fixes
            the latent sites and checks the structure).
        schedule: ``"sigmoid"`` or ``"linear"``, see :func:`beta_schedule`.
        num_leapfrog: leapfrog steps per HMC transition.
        step_size: initial leapfrog step size.
        target_accept: acceptance probability the step size is adapted toward.
        batch_size: datapoints per chunk.
        plate_name: name of the plate over datapoints.
        progress: called after every chunk with the number of datapoints done.

    Returns:
        :class:`AISResult` with (N,) tensors, float64, nats per datapoint.

    Raises:
        ValueError: ``num_steps``, ``num_chains``, ``num_leapfrog`` or
            ``batch_size`` < 1; unknown ``initial`` or ``schedule``; a latent
            site that is not real-valued or not inside the data plate as its
            outermost plate; and everything
            :func:`pplvae.log_marginal_likelihood` rejects about the data
            (0 rows, NaN or infinite values) and the plates.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # a poor guide; p(z | x) = N(x/2, 1/2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(0.0, 2.0))
        >>> x = torch.tensor([0.0, 2.0])
        >>> pyro.set_rng_seed(0)
        >>> result = annealed_importance_sampling(model, guide, x, num_steps=100, num_chains=64)
        >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x)  # log N(x; 0, 2)
        >>> bool((result.log_px - exact).abs().max() < 0.05)
        True
    """
    return _ais(model, guide, args, kwargs, num_steps=num_steps, num_chains=num_chains, initial=initial,
                schedule=schedule, num_leapfrog=num_leapfrog, step_size=step_size, target_accept=target_accept,
                batch_size=batch_size, plate_name=plate_name, progress=progress)


def bidirectional_monte_carlo(
    model: Callable,
    guide: Callable,
    *args,
    data_arg: int = 0,
    num_steps: int = 500,
    num_chains: int = 16,
    **options,
) -> BDMCResult:
    """Bracket log p(x) on data simulated from the model by forward and reverse AIS ([2], section 4).

    Draws (z_i, x_i) ~ p(z) p(x | z) for every datapoint by running the model
    with its observed sites sampled (``poutine.uncondition``), with ``args`` as
    the template of shapes and other inputs; the simulated x replaces
    ``args[data_arg]``. Forward AIS on x gives a stochastic lower bound;
    reverse AIS, whose C chains start at the exact posterior sample z_i (a
    draw of p(z | x_i)), gives a stochastic upper bound. Both bounds approach
    log p(x_i) as T grows, so the width measures how far AIS with that T is
    from the truth, on data like the model's own.

    Args:
        model, guide, args: as for :func:`annealed_importance_sampling`.
        data_arg: position of the data in ``args``; the model must have exactly
            one observed site, whose simulated value has that argument's shape.
        num_steps, num_chains, options: passed to both AIS runs (``initial``,
            ``schedule``, ``num_leapfrog``, ``step_size``, ``target_accept``,
            ``batch_size``, ``plate_name``, ``progress``).

    Returns:
        :class:`BDMCResult`: ``lower`` and ``upper`` (N,), nats, float64.

    Raises:
        ValueError: ``data_arg`` is not a tensor argument, the model has not
            exactly one observed site, its simulated value has another shape,
            and everything :func:`annealed_importance_sampling` raises.
    """
    if not (0 <= data_arg < len(args) and isinstance(args[data_arg], torch.Tensor)):
        raise ValueError(f"args[{data_arg}] must be the data tensor, got {len(args)} positional argument(s).")
    _checked_data(args, {})  # 0 rows or non-finite inputs: named here, not as an error inside the model
    template = args[data_arg]
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*args)
    sites = _sample_sites(trace)
    observed = [s for s in sites.values() if s["infer"].get("was_observed", False)]
    if len(observed) != 1:
        raise ValueError(f"bidirectional_monte_carlo needs one observed site, the model has {len(observed)}.")
    data = observed[0]["value"].detach()
    if data.shape != template.shape:
        raise ValueError(
            f"The observed site {observed[0]['name']!r} simulates shape {tuple(data.shape)}, "
            f"but args[{data_arg}] has shape {tuple(template.shape)}."
        )
    data = data.to(template.dtype)
    latents = {name: s["value"].detach() for name, s in sites.items() if not s["infer"].get("was_observed", False)}
    args = args[:data_arg] + (data,) + args[data_arg + 1:]
    common = dict(num_steps=num_steps, num_chains=num_chains, **options)
    forward = _ais(model, guide, args, {}, **common)
    reverse = _ais(model, guide, args, {}, posterior=latents, **common)
    return BDMCResult(lower=forward.log_px, upper=reverse.log_px, data=data, latents=latents,
                      forward=forward, reverse=reverse)


def _ais(model, guide, args, kwargs, *, num_steps=500, num_chains=16, initial="guide", schedule="sigmoid",
         num_leapfrog=5, step_size=0.05, target_accept=0.65, batch_size=100, plate_name="data",
         progress=None, posterior=None) -> AISResult:
    """Forward AIS, or reverse AIS from ``posterior`` (site -> (N, ...) exact posterior draws)."""
    for name, value in (("num_chains", num_chains), ("num_leapfrog", num_leapfrog), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if initial not in INITIALS:
        raise ValueError(f"Unknown initial distribution {initial!r}; choose one of {INITIALS}.")
    betas = beta_schedule(num_steps, schedule)
    if posterior is not None:
        betas = betas.flip(0)
    num_data, _ = _checked_data(args, kwargs)
    with torch.no_grad(), poutine.block():
        nesting = _probe(model, guide, args, kwargs, num_data, plate_name).max_plate_nesting
    chunks = []
    # Pyro's checks ran on the probe; a diverging leapfrog trajectory may reach
    # non-finite values, which HMC rejects and which the checks would raise on.
    with poutine.block(), pyro.validation_enabled(False):
        for start in range(0, num_data, batch_size):
            stop = min(start + batch_size, num_data)
            chunk_args, chunk_kwargs = _slice_data(args, kwargs, num_data, start, stop)
            path = _Path(model, guide, chunk_args, chunk_kwargs, num_chains, stop - start, nesting,
                         plate_name, initial)
            start_state = None
            if posterior is not None:
                start_state = path.flatten({name: value[start:stop].expand(num_chains, *value[start:stop].shape)
                                            for name, value in posterior.items()})
            chunks.append(_anneal(path, betas, start_state, num_leapfrog, step_size, target_accept))
            if progress is not None:
                progress(stop - start)
    log_w, acceptance, final_step = (torch.cat(parts, dim=-1) for parts in zip(*chunks))
    estimate = torch.logsumexp(log_w, dim=0) - math.log(num_chains)  # (N,)
    return AISResult(
        log_px=-estimate if posterior is not None else estimate,
        log_weights=log_w,
        acceptance=acceptance,
        step_size=final_step,
        num_steps=num_steps,
        num_chains=num_chains,
        initial=initial,
        reverse=posterior is not None,
    )


class _Path:
    """The annealing path on one data chunk: flattened latents (C, n, D) <-> sites, and their log-densities."""

    def __init__(self, model, guide, args, kwargs, num_chains, num_data, nesting, plate_name, initial):
        self.args, self.kwargs, self.plate_name, self.initial = args, kwargs, plate_name, initial
        self.num_chains, self.num_data = num_chains, num_data
        self.nesting = nesting + 1  # the chains plate is left of the model's plates

        def chains(fn):
            def in_chains(*a, **kw):
                with pyro.plate("chains", num_chains, dim=-self.nesting):
                    return fn(*a, **kw)

            return in_chains

        self.model, self.guide = chains(model), chains(guide)
        with torch.no_grad():
            source = self.guide if initial == "guide" else self.model
            trace = poutine.trace(source).get_trace(*args, **kwargs)
        latent = [s for s in _sample_sites(trace).values() if not s["is_observed"]]
        self.shapes = {}
        for site in latent:
            _check_real(site)
            value = site["value"]
            if value.shape[:2] != (num_chains, num_data):
                raise ValueError(
                    f"AIS needs the plate {plate_name!r} as the outermost plate of latent site "
                    f"{site['name']!r}: its value has shape {tuple(value.shape)}, expected "
                    f"({num_chains} chains, {num_data} datapoints, ...)."
                )
            self.shapes[site["name"]] = value.shape[2:]
        self.initial_state = self.flatten({s["name"]: s["value"] for s in latent})

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """site -> (C, n, *shape) to (C, n, D), in the values' dtype."""
        return torch.cat([values[name].reshape(self.num_chains, self.num_data, -1) for name in self.shapes], dim=-1)

    def unflatten(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        values, at = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            values[name] = state[..., at:at + size].reshape(self.num_chains, self.num_data, *shape)
            at += size
        return values

    def _log_density(self, fn, values) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum over all sites, sum over the latent sites) of fn's log-densities at ``values``: (C, n) each."""
        trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob()
        total = latent = 0.0
        for name, site in _sample_sites(trace).items():
            log_p = _per_datapoint(site, self.plate_name, self.nesting - 1)  # (C or 1, n or 1)
            total = total + log_p
            if name in self.shapes:
                latent = latent + log_p
        shape = (self.num_chains, self.num_data)
        return torch.broadcast_to(total, shape), torch.broadcast_to(latent, shape)

    def log_densities(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x, z) and log q_0(z | x) at ``state`` (C, n, D): (C, n) each, nats."""
        values = self.unflatten(state)
        log_joint, log_prior = self._log_density(self.model, values)
        if self.initial == "prior":
            return log_joint, log_prior
        return log_joint, self._log_density(self.guide, values)[1]

    def value_and_grad(self, state: torch.Tensor, beta: float):
        """log p(x, z), log q_0(z|x) (C, n) and the gradient of log f_beta with respect to ``state`` (C, n, D)."""
        with torch.enable_grad():
            state = state.detach().requires_grad_(True)
            log_joint, log_q0 = self.log_densities(state)
            log_f = log_q0 + beta * (log_joint - log_q0)
            (grad,) = torch.autograd.grad(log_f.sum(), state)
        return log_joint.detach(), log_q0.detach(), grad


def _check_real(site) -> None:
    support = site["fn"].support
    while hasattr(support, "base_constraint"):  # independent(...), mixtures
        support = support.base_constraint
    if support is not constraints.real:
        raise ValueError(
            f"AIS moves real-valued latents only; site {site['name']!r} has support {site['fn'].support}. "
            "Reparameterize it on the real line (e.g. sample a Normal and transform it in the model)."
        )


def _anneal(path: _Path, betas, start_state, num_leapfrog, step_size, target_accept):
    """One chunk's chains along ``betas``: log-weights (C, n), mean acceptance (n,), final step sizes (n,)."""
    state = path.initial_state if start_state is None else start_state.to(path.initial_state)
    state = state.detach()
    dtype = state.dtype
    num_chains, num_data = state.shape[:2]
    step = torch.full((1, num_data, 1), step_size, dtype=dtype, device=state.device)  # per datapoint
    log_w = torch.zeros(num_chains, num_data, dtype=torch.float64, device=state.device)
    accept_sum = torch.zeros(num_data, dtype=torch.float64, device=state.device)
    with torch.no_grad():
        log_joint, log_q0 = path.log_densities(state)
    transitions = len(betas) - 2
    for t in range(1, len(betas)):
        beta, previous = betas[t].item(), betas[t - 1].item()
        log_w += (beta - previous) * (log_joint - log_q0).double()
        if t == len(betas) - 1:
            break  # the last transition would not change the weights
        # The target moved from beta_{t-1} to beta_t: its gradient at the current state changes.
        log_joint, log_q0, grad = path.value_and_grad(state, beta)
        state, log_joint, log_q0, grad, accept_prob = _hmc(
            path, state, log_joint, log_q0, grad, beta, step, num_leapfrog
        )
        rate = accept_prob.mean(0)  # (n,)
        accept_sum += rate.double()
        step = step * torch.where(rate > target_accept, _STEP_GROWTH, 1 / _STEP_GROWTH).reshape(1, -1, 1)
    acceptance = accept_sum / max(transitions, 1)
    return log_w, acceptance, step.reshape(-1).double()


def _hmc(path, state, log_joint, log_q0, grad, beta, step, num_leapfrog):
    """One HMC transition leaving f_beta invariant, for every chain at once ([4], section 5.2.3)."""
    momentum = torch.randn_like(state)  # (C, n, D)
    log_f = log_q0 + beta * (log_joint - log_q0)  # (C, n)
    energy = -log_f + 0.5 * momentum.pow(2).sum(-1)
    new_state, new_grad = state, grad
    new_momentum = momentum + 0.5 * step * new_grad
    for i in range(num_leapfrog):
        new_state = new_state + step * new_momentum
        new_joint, new_q0, new_grad = path.value_and_grad(new_state, beta)
        new_momentum = new_momentum + (step if i < num_leapfrog - 1 else 0.5 * step) * new_grad
    new_log_f = new_q0 + beta * (new_joint - new_q0)
    new_energy = -new_log_f + 0.5 * new_momentum.pow(2).sum(-1)
    log_accept = (energy - new_energy).clamp(max=0.0)
    accept_prob = torch.where(torch.isnan(log_accept), torch.zeros_like(log_accept), log_accept.exp())  # (C, n)
    accept = torch.rand_like(accept_prob) < accept_prob

    def pick(new, old):
        return torch.where(accept.reshape(accept.shape + (1,) * (new.dim() - 2)), new, old)

    return (pick(new_state, state), pick(new_joint, log_joint), pick(new_q0, log_q0), pick(new_grad, grad),
            accept_prob)
