"""Fitting a model/guide pair by stochastic variational inference, with checkpoints and metrics.

The loss is built by :func:`pplvae.objectives.make_objective` from the
config (ELBO, analytic-KL ELBO, beta-VAE with optional KL warm-up, IWAE,
MMD-VAE); see :mod:`pplvae.objectives`.

References:
    [1] Kingma & Welling (2013), "Auto-Encoding Variational Bayes", algorithm 1.
    [2] Ranganath, Gerrish & Blei (2014), "Black Box Variational Inference".
    [3] Sønderby et al. (2016), "Ladder Variational Autoencoders" (KL warm-up).
    [4] Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders",
        section 5 (Adam eps 1e-4, the staged learning-rate schedule).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pyro
import torch
from pyro import poutine
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader

from pplvae import distributed
from pplvae.compiled_chunks import cpu_threads
from pplvae.runs import (CHECKPOINT, CHECKPOINT_KEYS, CONFIG, METRICS, describe_changes, get_rng_state,
                         load_checkpoint, resumed_config, run_lock, save_checkpoint, save_csv, save_json,
                         set_rng_state)
from pplvae.data import ImageData
from pplvae.data.batches import batch_size_of, check_data, iterate_batches, num_datapoints
from pplvae.data.images import binarize
from pplvae.models import model_config
from pplvae.models.protocol import check_model_guide
from pplvae.objectives import KERNELS, OBJECTIVES, kl_warmup_weight, make_objective
from pplvae.schedules import SCHEDULES, make_scheduler
from pplvae.trace_elbo import FastTrace_ELBO

logger = logging.getLogger(__name__)

TRAIN_SUBSET_BINARIZATION_SEED = 1  # the train-side metrics' fixed binarization
COMPILE_MODES = ("default", "reduce-overhead")
#: TrainConfig fields of configs saved before the field existed: what those runs used.
LEGACY_TRAIN_DEFAULTS = {"adam_eps": 1e-8}


@dataclass
class TrainConfig:
    """How to fit: the optimiser, the schedule, the seed and the device.

    Attributes:
        epochs: passes over the training set (the total, also when resuming).
        batch_size: datapoints per SVI step.
        learning_rate: Adam's step size (of epoch 0 under a schedule).
        adam_betas: Adam's (beta1, beta2).
        adam_eps: Adam's epsilon; default 1e-4, Burda et al.'s [4] (torch's own
            default, 1e-8, trains the 784-200-200-50 VAE to a worse optimum at
            equal epochs: docs/variants_results.md).
        lr_schedule: the learning rate per epoch, one of
            :data:`pplvae.schedules.SCHEDULES`: ``"constant"``, ``"burda"``
            (stage i = 0, 1, ... of 3^i epochs at ``learning_rate`` * 10^(-i/7) [4]),
            ``"step"`` (times ``lr_gamma`` every ``lr_step_size`` epochs) or
            ``"cosine"`` (down to ``lr_min`` at ``epochs``); see
            :func:`pplvae.schedules.make_scheduler`.
        lr_step_size, lr_gamma: the ``"step"`` schedule's period (epochs) and factor.
        lr_min: the ``"cosine"`` schedule's last rate.
        clip_norm: clip the gradients' global L2 norm (of the per-datapoint
            loss) to this before each Adam step; None: no clipping.
        seed: seeds torch, Python and NumPy (``pyro.set_rng_seed``): the same
            seed and config give the same numbers on the same machine.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        eval_batch_size: datapoints per chunk when computing the test ELBO.
        num_workers: worker processes of the ``DataLoader`` that :func:`fit`
            makes for a ``Dataset`` (0: load in the training process).
        validate: Pyro's distribution and trace checks in every step; off by
            default since the data are checked once up front.
        objective: ``"elbo"`` (Trace_ELBO), ``"elbo-analytic"``
            (TraceMeanField_ELBO, closed-form KL), ``"iwae"`` (K-sample bound)
            or ``"mmd"`` (MMD-VAE); see :func:`pplvae.objectives.make_objective`.
        beta: weight of the KL term (beta-VAE) for the two ELBOs; 1 is the ELBO.
        kl_warmup: epochs over which beta rises linearly from 0 to ``beta``,
            updated before every step (0: no warm-up); ELBO objectives only.
        num_particles: samples of z per datapoint (K for ``"iwae"``).
        gradient: ``"standard"`` or ``"dreg"`` (doubly reparameterized, ``"iwae"`` only).
        mmd_weight: lambda, the per-datapoint weight of MMD^2 for ``"mmd"``.
        kernel: ``"gaussian"`` or ``"imq"``, the MMD kernel for ``"mmd"``.
        max_skipped_steps: steps whose loss or gradient is NaN or infinite
            that are skipped (no update) before training stops with
            :class:`NonFiniteLossError`; 0 (default): the first one stops it.
        compile: train with :class:`CompiledLoss`: the loss recorded as an
            operator graph and compiled by Inductor, ``torch.compile``'s
            compiler, once per batch shape (the same values and gradients to
            float rounding; the compile time, seconds to tens of seconds on a
            CPU, is paid in the first epoch and logged). Needs a model whose
            sites and Python constants are the same at every step, so not with
            ``kl_warmup``; a gradient without tensor hooks, so not with
            ``gradient="dreg"``; and an objective whose Python does not read
            tensor values: ``"elbo"`` with beta 1 and one particle, or
            ``"iwae"`` (Pyro's Trace_ELBO, which the others run, does).
        compile_mode: ``torch.compile``'s mode with ``compile=True``:
            ``"default"``, or ``"reduce-overhead"`` (CUDA graphs, for small
            batches on a GPU; refused on a CPU).
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-4
    lr_schedule: str = "constant"
    lr_step_size: int = 1
    lr_gamma: float = 0.1
    lr_min: float = 0.0
    clip_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1000
    num_workers: int = 0
    validate: bool = False
    objective: str = "elbo"
    beta: float = 1.0
    kl_warmup: float = 0.0
    num_particles: int = 1
    mmd_weight: float = 1000.0
    kernel: str = "gaussian"
    max_skipped_steps: int = 0
    compile: bool = False
    compile_mode: str = "default"
    gradient: str = "standard"

    def __post_init__(self):
        for name in ("learning_rate", "beta", "kl_warmup", "mmd_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.max_skipped_steps < 0:
            raise ValueError(f"max_skipped_steps must be >= 0, got {self.max_skipped_steps}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}.")
        if not self.kl_warmup >= 0:
            raise ValueError(f"kl_warmup must be >= 0 epochs, got {self.kl_warmup}.")
        if self.kl_warmup > 0 and self.objective not in ("elbo", "elbo-analytic"):
            raise ValueError(f"kl_warmup weights the KL term of 'elbo' or 'elbo-analytic', not {self.objective!r}.")
        if self.compile and self.kl_warmup > 0:
            raise ValueError("compile=True records the loss once, but kl_warmup changes beta at every step; "
                             "train without --compile or without --kl-warmup.")
        if self.compile and not (self.objective == "iwae" or (
                self.objective == "elbo" and self.beta == 1 and self.num_particles == 1)):
            options = "".join([f", beta {self.beta}" if self.beta != 1 else "",
                               f", {self.num_particles} particles" if self.num_particles != 1 else ""])
            raise ValueError(f"compile=True records objective 'elbo' (beta 1, one particle) or 'iwae'; "
                             f"{self.objective!r}{options} runs Pyro code that branches on tensor values, which one "
                             f"recorded graph cannot hold; train without --compile.")
        if self.compile and self.gradient == "dreg":
            raise ValueError("gradient='dreg' weighs the guide's gradients with tensor hooks, which the graph "
                             "recorded by compile=True does not keep; train without --compile.")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}.")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} is a mode of compile=True; add --compile.")
        self.build_objective()  # raises ValueError on options that do not fit the objective
        if int(self.num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}.")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # a list from config.json
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}.")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps}.")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}.")
        if int(self.lr_step_size) < 1 or not 0 < self.lr_gamma <= 1 or not 0 <= self.lr_min < self.learning_rate:
            raise ValueError(f"Need lr_step_size >= 1, 0 < lr_gamma <= 1 and 0 <= lr_min < learning_rate, got "
                             f"{self.lr_step_size}, {self.lr_gamma}, {self.lr_min}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}.")
        device = resolve_device(self.device)
        if self.compile_mode == "reduce-overhead" and device.type != "cuda":
            raise ValueError(f"compile_mode='reduce-overhead' runs the loss as CUDA graphs, which need a GPU; "
                             f"on {device} use compile_mode='default'.")

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainConfig":
        """The config saved in a run's ``config.json`` (``asdict`` of a TrainConfig).

        Fields a run saved before they existed take the value it was trained
        with, not today's default: ``adam_eps`` 1e-8 (torch's default, used
        before the field existed).
        """
        return cls(**{**LEGACY_TRAIN_DEFAULTS, **saved})

    def build_objective(self):
        """The training objective this config names, at its target ``beta``."""
        return make_objective(self.objective, beta=self.beta, num_particles=self.num_particles,
                              mmd_weight=self.mmd_weight, kernel=self.kernel, gradient=self.gradient)

    def beta_at(self, epochs_done: float) -> float:
        """The KL weight after ``epochs_done`` (possibly fractional) epochs of warm-up."""
        return kl_warmup_weight(epochs_done, self.kl_warmup, self.beta)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives CUDA when available, else the CPU; other names pass through.

    Raises:
        ValueError: a CUDA device asked for where torch sees none, or a bad name.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' asked for, but torch sees no CUDA GPU; use --device cpu or auto.")
    return device


def _rows_of(data, rows: slice):
    """The datapoints ``rows`` of tensors (a tensor, tuple or dict of them) or of a ``Dataset``."""
    if isinstance(data, torch.Tensor):
        return data[rows]
    if isinstance(data, dict):
        return {key: value[rows] for key, value in data.items()}
    if isinstance(data, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in data):
        return tuple(value[rows] for value in data)
    return torch.utils.data.Subset(data, range(len(data))[rows])


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a step's loss or gradient was NaN or infinite.

    The message names the epoch, the step and, where a re-run of the step's
    model and guide finds one, the sample site whose log-density is not
    finite. The parameters are left as they were before the step and the last
    checkpoint on disk is the last good one.
    """


class NegativeELBO(nn.Module):
    """The loss of one SVI step as a torch module: -ELBO per datapoint, in nats.

    ``forward(*args, **kwargs)`` calls ``objective.differentiable_loss(model.model,
    model.guide, *args, **kwargs)`` (a Pyro ELBO: summed over the minibatch)
    and divides by the minibatch size B (dim 0 of the first tensor argument),
    so gradients are per-datapoint averages. Being an ``nn.Module`` that owns
    the model's parameters, it can be wrapped in
    ``torch.nn.parallel.DistributedDataParallel``.

    Raises:
        ValueError: no tensor among the arguments.
    """

    def __init__(self, model: nn.Module, objective=None):
        super().__init__()
        self.model = model
        self.objective = objective if objective is not None else FastTrace_ELBO()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.model.model, self.model.guide, *args, **kwargs)
        return loss / batch_size_of(args, kwargs)


class CompiledLoss(nn.Module):
    """A loss module recorded as an operator graph and compiled by Inductor, once per batch shape.

    Pyro runs the model and guide through its effect handlers at every step;
    for a model whose sites, plates and Python constants do not change between
    steps, all that Python yields the same torch operators each time. The
    first call with a given shape of arguments records them with
    ``torch.fx.experimental.proxy_tensor.make_fx`` (random draws are recorded
    as operators and drawn afresh at every call, from torch's generator as the
    eager loss draws them) and compiles that graph with
    ``torch._inductor.compile``, ``torch.compile``'s compiler called on the
    recorded graph: the elementwise log-density arithmetic is fused into few
    kernels, forward and backward. Later calls with that shape run the
    compiled graph directly on the module's parameters and buffers, read in
    place, so the optimiser's in-place updates are seen. Values and gradients
    equal the eager loss's given the same seed, to float rounding.

    The graph is called without TorchDynamo, so no guards are checked at every
    step (``torch.compile``'s guards and dynamic-shape wrappers made a batch-20
    step of a 784-200-200-50 VAE 2.46 ms against 2.13 ms on a 2-core Xeon);
    in exchange each batch shape is compiled apart: an epoch's last, smaller
    minibatch is compiled when first seen, and after :attr:`MAX_SHAPES`
    shapes further ones run the eager loss (the same values, uncompiled). On
    a CPU a change of torch's thread count counts as a new shape: Inductor
    writes the count into the graph's loops.
    ``mode="reduce-overhead"`` (CUDA graphs) goes through ``torch.compile``
    with dynamic shapes, one compile for every batch size: CUDA graphs need
    its bookkeeping of the parameters' fixed addresses.

    Before the first recording the eager loss runs once, in a forked RNG and
    without gradients, so that an objective's one-time work (Pyro's guess of
    the plate nesting, a run of model and guide) happens then and is not
    recorded into every step.

    Not for models with data-dependent Python control flow or with constants
    that change between steps (KL warm-up's beta): the recording keeps the
    first step's choices.

    Args:
        loss: the eager loss module, e.g. :class:`NegativeELBO`; called as
            ``loss(*args)`` with positional tensor (or tuple of tensor)
            arguments, returning a scalar. Its parameters and buffers are
            listed at the first call; one replaced afterwards (rather than
            updated in place) is not seen.
        mode: ``torch.compile``'s mode (``"default"``, ``"reduce-overhead"``).

    Attributes:
        compile_seconds: seconds spent recording and compiling, all batch
            shapes together, each with its first compiled call (None before
            the first call).

    Raises:
        ValueError: (on call) keyword arguments.
    """

    MAX_SHAPES = 8
    """Batch shapes compiled per loss; calls with further shapes run the eager loss."""

    def __init__(self, loss: nn.Module, mode: str = "default"):
        super().__init__()
        self.loss = loss
        self.mode = mode
        self.compile_seconds: float | None = None
        self._names: list[str] = []
        self._state: list[torch.Tensor] = []
        self._compiled: dict = {}
        self._warned = False

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if kwargs:
            raise ValueError("compile=True needs the model's arguments as positional ones (tensor or tuple items).")
        leaves, spec = pytree.tree_flatten(args)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        key = "dynamic" if self.mode == "reduce-overhead" else (spec, cpu_threads(tensors), tuple(
            (leaf.shape, leaf.dtype, leaf.device) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves))
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled(*self._state, *tensors)
        if len(self._compiled) >= self.MAX_SHAPES:
            if not self._warned:
                self._warned = True
                logger.warning("the loss is compiled for %d batch shapes already; further shapes, such as %s, "
                               "run uncompiled", self.MAX_SHAPES, [tuple(t.shape) for t in tensors])
            return self.loss(*args)
        start = time.perf_counter()
        if not self._compiled:  # one eager run first: the objective's one-time work stays out of the graph
            devices = [t.device for t in tensors if t.device.type == "cuda"][:1]
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self.loss(*args)
        compiled = self._compiled[key] = self._compile(leaves, spec)
        out = compiled(*self._state, *tensors)
        seconds = time.perf_counter() - start
        self.compile_seconds = (self.compile_seconds or 0.0) + seconds
        logger.info("recorded and compiled the loss for arguments of shapes %s in %.1f s",
                    [tuple(t.shape) for t in tensors], seconds)
        return out

    def _compile(self, leaves: list, spec) -> Callable:
        from torch.fx.experimental.proxy_tensor import make_fx

        if not self._names:
            state = {**dict(self.loss.named_parameters()), **dict(self.loss.named_buffers())}
            self._names, self._state = list(state), list(state.values())
        names, count = self._names, len(self._names)
        where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

        def loss(*tensors):
            flat = list(leaves)
            for i, tensor in zip(where, tensors[count:]):
                flat[i] = tensor
            state = dict(zip(names, tensors[:count]))
            return torch.func.functional_call(self.loss, state, tuple(pytree.tree_unflatten(flat, spec)))

        inputs = [*self._state, *(leaves[i] for i in where)]
        options = {"fallback_random": True}  # draws come from torch's generator, as in the eager loss
        try:
            with pyro.validation_enabled(False):
                # fake tensors: no real run, no draws taken
                graph = make_fx(loss, tracing_mode="symbolic" if self.mode == "reduce-overhead" else "fake")(*inputs)
        except Exception as error:  # the eager run passed: what fails here is Python that reads tensor values
            first = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"compile=True could not record the loss as one operator graph ({type(error).__name__}: "
                             f"{first}); train without --compile.") from error
        if self.mode == "reduce-overhead":
            return torch.compile(graph, dynamic=True, options={**options, "triton.cudagraphs": True})
        # the backward compiled now too, not lazily inside the first backward(): compile_seconds holds both
        with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
            return torch._inductor.compile(graph, inputs, options=options)


class Trainer:
    """SVI for a model/guide pair: an objective, fused ``torch.optim.Adam``, any data.

    The model is any object with ``model`` and ``guide`` methods and
    ``parameters()`` (:class:`pplvae.models.protocol.ModelGuidePair`: a
    ``PyroModule`` with module-local parameters, or a ``torch.nn.Module``
    whose programs call ``pyro.module``); the optimiser holds
    ``model.parameters()``.

    Args:
        model: the model/guide pair.
        config: :class:`TrainConfig`.
        objective: any Pyro ELBO (``Trace_ELBO``, ``TraceEnum_ELBO``,
            ``TraceGraph_ELBO``, ``RenyiELBO``, ``TraceMeanField_ELBO``, one of
            :mod:`pplvae.objectives`, a user's); default
            ``config.build_objective()``. Objectives with
            ``differentiable_loss`` take the step through it (no host sync);
            the others through ``loss_and_grads`` on the programs scaled by
            1/B. Per-epoch split terms come from ``loss_terms`` where the
            objective has it (every :mod:`pplvae.objectives` objective does),
            else the objective's own estimate of -loss.

    Adam is the fused implementation on the CPU and CUDA (one kernel for all
    parameters instead of a Python loop over them; the same update up to
    float rounding).

    Data parallel: when ``torch.distributed`` is initialized (``torchrun``,
    :mod:`pplvae.distributed`), the loss is wrapped in
    ``DistributedDataParallel`` (rank 0's initial weights are broadcast, and
    ``backward`` averages the gradients over the ranks: with equal shards the
    gradient of the global minibatch's mean), each rank steps on its share of
    every global minibatch (:func:`pplvae.distributed.shard_batches`), and
    metrics are all-reduced. Every parameter must get a gradient at every
    step (DDP's ``find_unused_parameters`` is off). ``config.device`` ``"cuda"``
    or ``"auto"`` means the rank's own GPU, ``cuda:LOCAL_RANK``.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, objective=None):
        self.config = config
        self.device = distributed.local_device(resolve_device(config.device))
        self.model = model.to(self.device)
        self.objective = objective if objective is not None else config.build_objective()
        self.loss = NegativeELBO(self.model, self.objective)
        self.differentiable = hasattr(self.objective, "differentiable_loss")
        if config.compile and not self.differentiable:
            raise ValueError(f"compile=True needs an objective with differentiable_loss; "
                             f"{type(self.objective).__name__} has none.")
        self.step_loss = CompiledLoss(self.loss, config.compile_mode) if config.compile else self.loss
        if distributed.is_initialized():
            if not self.differentiable:
                raise ValueError(f"data-parallel training needs an objective with differentiable_loss (its "
                                 f"gradients are averaged by DistributedDataParallel); "
                                 f"{type(self.objective).__name__} has none.")
            # broadcasts rank 0's parameters; backward() then averages the gradients over the ranks
            self.step_loss = nn.parallel.DistributedDataParallel(
                self.step_loss, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # the parameters the optimiser steps, listed once (walking the module tree at every step costs
        # about as much as a small network's forward pass)
        self._params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self._params, lr=config.learning_rate, betas=config.adam_betas,
                                          eps=config.adam_eps, fused=self.device.type in ("cpu", "cuda"))
        self.scheduler = make_scheduler(self.optimizer, config.lr_schedule, config.epochs, config.lr_step_size,
                                        config.lr_gamma, config.lr_min)
        self.epoch = 0
        self.history: list[dict] = []
        self.skipped_steps = 0

    def step(self, *args, **kwargs) -> torch.Tensor:
        """One SVI step on a minibatch; returns the detached -ELBO per datapoint.

        Raises:
            NonFiniteLossError: the loss or a gradient is NaN or infinite; no
                update is made. Checking costs one host sync per step (on CUDA;
                nothing on the CPU), the least that keeps NaN out of the weights.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self.differentiable:
            loss = self.step_loss(*args, **kwargs)
            loss.backward()
        else:
            scale = 1.0 / batch_size_of(args, kwargs)
            loss = torch.as_tensor(self.objective.loss_and_grads(
                poutine.scale(self.model.model, scale), poutine.scale(self.model.guide, scale), *args, **kwargs))
        # NaN and inf survive a sum, so one sum per gradient tensor is the check (an inf-norm of every
        # gradient, torch's _foreach_norm, took a third of a batch-20 step on a CPU); a sum of finite
        # gradients overflows only beyond 3e38, where training has diverged anyway.
        grads = [p.grad.sum() for p in self._params if p.grad is not None]
        gradient_sum = torch.stack(grads).sum() if grads else loss.new_zeros(())
        if not (torch.isfinite(loss) & torch.isfinite(gradient_sum)):
            what = "loss" if not torch.isfinite(loss) else "gradient"
            raise NonFiniteLossError(f"the {what} is not finite (loss {loss.item():.4g} nats per datapoint)")
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.config.clip_norm)
        self.optimizer.step()
        return loss.detach()

    def non_finite_site(self, *args, **kwargs) -> str | None:
        """Re-run model and guide on the arguments once; name the first sample site whose value or
        log-density is not finite (guide first), or None. Used only after a failed step."""
        try:
            with torch.no_grad(), pyro.validation_enabled(False):
                guide = pyro.poutine.trace(self.model.guide).get_trace(*args, **kwargs)
                model = pyro.poutine.trace(pyro.poutine.replay(self.model.model, trace=guide)).get_trace(
                    *args, **kwargs)
                for program, trace in (("guide", guide), ("model", model)):
                    trace.compute_log_prob()
                    for name, site in trace.nodes.items():
                        if site["type"] == "sample" and not torch.isfinite(site["log_prob"]).all():
                            return f"the log-density of sample site {name!r} of the {program} is not finite"
        except Exception as error:  # a diagnosis only: the step has failed already
            return f"re-running the step raised {type(error).__name__}"
        return None

    def batches(self, data, train: bool = True) -> Iterator[tuple[tuple, dict]]:
        """``(args, kwargs)`` minibatches of one pass over ``data``, on the training device.

        ``data`` is :class:`pplvae.ImageData` (the training split, shuffled and
        dynamically binarized, or with ``train=False`` the test split in order;
        arguments from ``model.batch_args(x, labels)`` where the model has it,
        else ``(x,)``) or anything :func:`pplvae.data.batches.iterate_batches`
        takes (``train=False``: in order).

        In a process group each rank gets its share: for training the rows of
        :func:`pplvae.distributed.shard_batches` for ``(config.seed, self.epoch)``
        (a caller's ``DataLoader`` must carry a ``DistributedSampler``, whose
        ``set_epoch`` is called), for evaluation the contiguous range
        :func:`pplvae.distributed.shard_range`.

        Raises:
            ValueError: in a process group, a ``DataLoader`` without a
                ``DistributedSampler``, or fewer evaluation datapoints than ranks.
        """
        size = self.config.batch_size if train else self.config.eval_batch_size
        rows = None
        if distributed.is_initialized():
            rows = self._shard(data, size, train)
        if isinstance(data, ImageData):
            batch_args = getattr(self.model, "batch_args", lambda x, labels: (x,))
            if not train and rows is not None:
                data = ImageData(data.name, data.x_train, data.y_train, data.x_test[rows],
                                 None if data.y_test is None else data.y_test[rows], data.image_shape)
            images = data.train_batches(size, rows=rows) if train else data.test_batches(size)
            return ((batch_args(x, labels), {}) for x, labels in images)
        if not train and rows is not None:
            data = _rows_of(data, rows)
        return iterate_batches(data, size, shuffle=train, device=self.device, num_workers=self.config.num_workers,
                               rows=rows if train else None)

    def _shard(self, data, size: int, train: bool):
        """This rank's rows: index tensors per step (training) or a slice (evaluation); None for a DataLoader."""
        if isinstance(data, DataLoader):
            sampler = data.batch_sampler.sampler if data.batch_sampler is not None else data.sampler
            if not isinstance(sampler, torch.utils.data.DistributedSampler):
                raise ValueError("in a process group every rank needs its own share of a DataLoader: give it "
                                 "a torch.utils.data.DistributedSampler (or pass the Dataset and let pplvae shard it).")
            sampler.set_epoch(self.epoch)
            return None
        n = len(data.x_train if train else data.x_test) if isinstance(data, ImageData) else num_datapoints(data)
        if train:
            return distributed.shard_batches(n, size, self.config.seed, self.epoch)
        if n < distributed.world_size():
            raise ValueError(f"{n} evaluation datapoints cannot be shared by {distributed.world_size()} ranks; "
                             f"use more test data or fewer processes.")
        return distributed.shard_range(n)

    def check(self, data) -> None:
        """Run model and guide once on a few datapoints of ``data`` and check that they agree.

        Raises:
            ValueError: from :func:`pplvae.models.protocol.check_model_guide`
                (the sites of model and guide differ), or an error of the
                programs themselves on this data, before any step is taken.
        """
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):  # no draw spent
            first = next(iter(self.batches(data)), None)
            if first is None:
                raise ValueError("the training data yields no minibatch (an empty Dataset or DataLoader); "
                                 "pass at least one datapoint.")
            args, kwargs = first
            keep = min(4, batch_size_of(args, kwargs))
            cut = lambda v: v[:keep] if isinstance(v, torch.Tensor) and v.dim() > 0 else v  # noqa: E731
            check_model_guide(self.model.model, self.model.guide, *map(cut, args),
                              **{k: cut(v) for k, v in kwargs.items()})

    def train_epoch(self, data, progress: bool = False) -> float:
        """One pass over the training data; returns the mean of the objective per datapoint
        over its steps (nats; the ELBO for ``"elbo"`` at beta 1). With ``kl_warmup``
        the objective's beta is set before every step."""
        from tqdm.auto import tqdm

        self.model.train()
        n = num_datapoints(data.x_train if isinstance(data, ImageData) else data)
        steps = None if n is None or isinstance(data, DataLoader) else -(-n // self.config.batch_size)
        if isinstance(data, DataLoader):
            steps = len(data) if hasattr(data.dataset, "__len__") else None
        if distributed.is_initialized() and n is not None and not isinstance(data, DataLoader):
            steps = -(-(-(-n // distributed.world_size())) // self.config.batch_size)
        bar = tqdm(self.batches(data), total=steps, desc=f"epoch {self.epoch + 1}", leave=False, mininterval=1.0,
                   disable=None if progress else True)  # None: no bar where stderr is not a terminal
        total = torch.zeros((), device=self.device)
        seen = 0
        for i, (args, kwargs) in enumerate(bar):
            if self.config.kl_warmup > 0:
                self.loss.objective.beta = self.config.beta_at(self.epoch + (i / steps if steps else 0.0))
            size = batch_size_of(args, kwargs)
            try:
                total += self.step(*args, **kwargs) * size
            except NonFiniteLossError as error:
                self.skipped_steps += 1
                if self.skipped_steps <= self.config.max_skipped_steps:
                    logger.warning("epoch %d, step %d: %s; step skipped", self.epoch + 1, i + 1, error)
                    continue
                site = self.non_finite_site(*args, **kwargs)
                raise NonFiniteLossError(
                    f"training diverged at epoch {self.epoch + 1}, step {i + 1}"
                    + (f" of {steps}" if steps else "") + f": {error}"
                    + (f"; {site}" if site else "") + ". The last good checkpoint is kept; lower the "
                    "learning rate, or allow skipped steps (max_skipped_steps)."
                ) from None
            seen += size
            if progress and i % 50 == 0:
                bar.set_postfix(elbo=f"{-total.item() / seen:.2f}")
        total, seen = distributed.all_reduce_sums([total, seen])  # over ranks: the global mean
        return -total / max(seen, 1)

    @torch.no_grad()
    def evaluate(self, data) -> float:
        """The test set's ELBO per datapoint (nats), one sample of z per datapoint; ``data``: as :meth:`batches`
        with ``train=False`` (for :class:`pplvae.ImageData`, its test split)."""
        return self.evaluate_terms(self.batches(data, train=False))["elbo"]

    @torch.no_grad()
    def evaluate_terms(self, batches) -> dict[str, float]:
        """The objective's terms per datapoint over ``(args, kwargs)`` batches.

        Where the objective has ``loss_terms`` (every :mod:`pplvae.objectives`
        objective): ``reconstruction`` (E_q log p(x|z), nats), ``kl``
        (KL(q(z|x) || p(z)), nats, estimated as the objective does), ``mmd`` for
        the MMD objective (MMD^2 of each batch against a prior sample, averaged
        over batches weighted by size; unitless), ``total`` (the objective at
        the current beta) and ``elbo`` = reconstruction - kl, one draw of z per
        datapoint (K draws averaged for IWAE, whose ``total`` is the K-sample
        bound). For other objectives ``total`` and ``elbo`` are both -loss per
        datapoint, the objective's own estimate of its bound (nats). In a
        process group the sums and counts of every rank's batches are added
        before dividing (a collective: every rank must call it).
        """
        self.model.eval()
        sums: dict[str, torch.Tensor | float] = {}
        n = 0
        terms_of = getattr(self.objective, "loss_terms", None)
        for args, kwargs in batches:
            if terms_of is not None:
                terms = terms_of(self.model.model, self.model.guide, *args, **kwargs)
            else:
                terms = {"total": -torch.as_tensor(self.objective.loss(self.model.model, self.model.guide,
                                                                       *args, **kwargs))}
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            n += batch_size_of(args, kwargs)
        *totals, n = distributed.all_reduce_sums([*sums.values(), n])  # each rank's shard: sums over ranks
        means = {key: value / n for key, value in zip(sums, totals)}
        elbo = means["reconstruction"] - means["kl"] if "kl" in means else means["total"]
        return {**means, "elbo": elbo}

    def epoch_metrics(self, data, test_data=None) -> dict[str, float]:
        """Split terms after an epoch, per datapoint, and the ``beta`` in force at its end.

        For :class:`pplvae.ImageData`: ``train_*`` on the first ``len(x_test)``
        training images (a fixed subset the size of the test set, or all of a
        smaller training set; binarized once with a fixed seed when the data
        are binarized, so train and test compare like for like), ``test_*`` on
        its test split. For other data: ``test_*`` on ``test_data`` when given
        (:meth:`evaluate_terms`); the train side is the epoch's running mean
        (``train_elbo``, set by :func:`fit`).
        """
        if self.config.kl_warmup > 0:
            self.loss.objective.beta = self.config.beta_at(self.epoch)
        row = {}
        if isinstance(data, ImageData):
            size = self.config.eval_batch_size
            n = min(len(data.x_test), len(data.x_train))
            x_train = data.x_train[:n]
            if data.binarized:
                x_train = binarize(x_train, torch.Generator(x_train.device).manual_seed(TRAIN_SUBSET_BINARIZATION_SEED))
            y_train = None if data.y_train is None else data.y_train[:n]
            subset = ImageData(data.name, x_train, y_train, x_train, y_train, data.image_shape)
            row.update({f"train_{key}": value for key, value in
                        self.evaluate_terms(self.batches(subset, train=False)).items()})
            test_data = data
        if test_data is not None:
            row.update({f"test_{key}": value for key, value in
                        self.evaluate_terms(self.batches(test_data, train=False)).items()})
        if hasattr(self.objective, "beta"):
            row["beta"] = self.objective.beta
        return row

    def _rng_state(self) -> dict:
        rng = get_rng_state()
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _set_rng_state(self, rng: dict) -> None:
        set_rng_state(rng)
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def state_dict(self) -> dict:
        """Model, optimiser, epoch, metrics and RNG states, in ``weights_only``-loadable types.

        In a process group this is a collective (every rank calls it): the
        RNG states of all ranks are gathered into ``"rng_ranks"`` (a list in
        rank order, complete on rank 0, which writes the checkpoint); ``"rng"``
        is this rank's own.
        """
        rng = self._rng_state()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": rng,
        }
        if distributed.is_initialized():
            state["rng_ranks"] = distributed.gather_objects(rng)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. In a process group each rank takes its own RNG state from
        ``"rng_ranks"``; where the checkpoint was written by another number of ranks, each rank's
        stream is seeded afresh from ``(config.seed, epoch, rank)`` (logged), the model and the
        optimiser being restored all the same."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # absent in checkpoints written before schedules existed
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        ranks = state.get("rng_ranks")
        if not distributed.is_initialized():
            self._set_rng_state(state["rng"])
        elif ranks is not None and len(ranks) == distributed.world_size():
            self._set_rng_state(ranks[distributed.rank()])
        else:
            written = len(ranks) if ranks is not None else 1
            logger.warning("the checkpoint was written by %d process(es), this run has %d: each rank's random "
                           "stream is seeded afresh", written, distributed.world_size())
            pyro.set_rng_seed(distributed.rank_seed(self.config.seed + self.epoch))

    def rebase_learning_rate(self, learning_rate: float, scheduled: bool = True) -> None:
        """After :meth:`load_state_dict`: make ``learning_rate`` the schedule's base rate.

        With the scheduler's state restored (``scheduled``), the current rate is
        scaled by ``learning_rate`` / the saved base rate, so an unchanged
        ``learning_rate`` resumes the schedule exactly and a new one scales it.
        Without it (a checkpoint from before schedules), the rate becomes
        ``learning_rate``, as the optimiser's saved state keeps the old one.
        """
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            if not scheduled:
                group["lr"] = learning_rate
            elif learning_rate != base:  # (x * a / a can move x's last bit)
                group["lr"] = group["lr"] * learning_rate / base
        self.scheduler.base_lrs = [learning_rate for _ in self.optimizer.param_groups]

    def metrics(self) -> pd.DataFrame:
        """Per-epoch metrics: epoch, train_elbo, test_elbo (nats per datapoint; test_elbo only with
        test data), the split terms ``{train,test}_{reconstruction,kl[,mmd],total}`` (per
        datapoint) where the objective has them, beta (where the objective has one), lr (the learning
        rate the epoch trained at), seconds."""
        columns = ["epoch", "train_elbo"] + (["test_elbo"] if self.history and "test_elbo" in self.history[0] else [])
        for side in ("train", "test"):
            columns += [f"{side}_{key}" for key in ("reconstruction", "kl", "mmd", "total")
                        if self.history and f"{side}_{key}" in self.history[0]]
        columns += [c for c in ("beta", "lr", "seconds") if not self.history or c in self.history[0]]
        return pd.DataFrame(self.history, columns=columns)


def default_run_config(model: nn.Module, data, config: TrainConfig) -> dict:
    """The config saved with a run: the model's name and sizes, the data set and the training config."""
    if isinstance(data, ImageData):
        data_config = {"dataset": data.name, "binarized": data.binarized,
                       "train_size": len(data.x_train), "test_size": len(data.x_test)}
    else:
        data_config = {"dataset": type(data).__name__, "train_size": num_datapoints(data)}
    return {"model": model_config(model), "data": data_config, "train": asdict(config)}


def init_from_data(model: nn.Module, data: ImageData) -> bool:
    """Call ``model.init_from_data(x_mean)`` with the mean training datapoint, when the model has it.

    Only for :class:`pplvae.ImageData` (other data: nothing is called).
    ``x_mean`` is ``data.x_train.mean(0)``, (x_dim,): for dynamically binarized
    data the mean of the grey levels is the mean of the binarized pixels. The
    built-in models set their Bernoulli decoder's output bias to the logit of
    this mean ([4]; :meth:`pplvae.networks.BernoulliDecoder.init_output_bias`).
    :func:`fit` calls this once at the start of a fresh run, never on resume.

    Returns:
        True when the model has the hook and it was called.
    """
    hook = getattr(model, "init_from_data", None)
    if hook is None or not isinstance(data, ImageData):
        return False
    with torch.no_grad():
        hook(data.x_train.mean(0))
    return True


def _with_world(run_config: dict, config: TrainConfig) -> dict:
    """``run_config`` with ``"distributed": {"world_size", "batch_size_per_rank", "global_batch_size"}``
    in a process group, without that section otherwise."""
    run_config = {key: value for key, value in run_config.items() if key != "distributed"}
    if distributed.is_initialized():
        world = distributed.world_size()
        run_config["distributed"] = {"world_size": world, "batch_size_per_rank": config.batch_size,
                                     "global_batch_size": config.batch_size * world}
    return run_config


def fit(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    run_config: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    test_data=None,
    objective=None,
) -> pd.DataFrame:
    """Fit ``model`` to ``data`` by SVI and return the per-epoch metrics.

    The contract (:class:`pplvae.models.protocol.ModelGuidePair`): ``model``
    has ``model`` and ``guide`` methods, Pyro programs taking one minibatch's
    arguments, and ``parameters()``; nothing else is required. Before the
    first step both programs run once on a few datapoints and must sample the
    same latent sites (:func:`pplvae.models.protocol.check_model_guide`).

    After every epoch the learning-rate scheduler steps, the metrics are
    computed and, when ``run_dir`` is given, ``checkpoint.pt`` (model,
    optimiser, scheduler, epoch, RNG states, metrics so far) and
    ``metrics.csv`` are written atomically, so a crash or Ctrl-C leaves the last
    good checkpoint and the metrics so far. ``config.json`` holds
    ``run_config`` (default: :func:`default_run_config`) beside them.

    Args:
        model: a model/guide pair such as :class:`pplvae.VAE` or a user's,
            already built (seed torch with ``pyro.set_rng_seed(config.seed)``
            before building it for reproducible initial weights). A fresh run
            first calls its ``init_from_data(x_mean)`` if it has one and
            ``data`` is :class:`pplvae.ImageData` (:func:`init_from_data`).
        data: the training data: :class:`pplvae.ImageData` (its training
            split, dynamically binarized where it is binarized, and its test
            split for the test metrics; the arguments are
            ``model.batch_args(x, labels)`` where the model has it, else
            ``(x,)``), or tensors (a tensor, a tuple or a dict of tensors), a
            ``torch.utils.data.Dataset`` or a ``DataLoader`` whose items are a
            tensor, a tuple (positional arguments) or a dict (keyword
            arguments) of the programs (:mod:`pplvae.data.batches`).
        config: :class:`TrainConfig`; default ``TrainConfig()``.
        run_dir: folder for the checkpoint, metrics and config; None keeps
            everything in memory.
        resume: continue the run in ``run_dir`` from its checkpoint up to
            ``config.epochs``; with data shuffled by pplvae (not a caller's
            ``DataLoader`` with its own generator) the result equals an
            uninterrupted run's. The model and data in ``run_config`` must be
            the saved ones; training settings may change (more epochs, a new
            learning rate), and the changes are listed under ``"history"`` in
            ``config.json``.
        progress: show a tqdm progress bar with the running ELBO (on a terminal only).
        run_config: the JSON-ready config to save, ``{"model", "data", "train"}``;
            default: :func:`default_run_config`.
        on_epoch: called with each epoch's metrics row (with ``config.compile``, the
            first row also holds ``compile_seconds``, the one-off time of
            recording and compiling the loss, included in its ``seconds``).
        test_data: data for the test metrics when ``data`` is not
            :class:`pplvae.ImageData`, of the same kinds as ``data``.
        objective: any Pyro ELBO instance (``TraceEnum_ELBO``,
            ``TraceGraph_ELBO``, ``RenyiELBO``, ...); default: the one
            ``config`` names.

    Returns:
        DataFrame with one row per epoch: ``epoch``, ``train_elbo``,
        ``test_elbo`` (nats per datapoint; higher is better), the objective's
        split terms per datapoint where it has them (``train_reconstruction``,
        ``train_kl``, ``train_mmd`` for the MMD objective, ``train_total``,
        and the same for ``test``; see :meth:`Trainer.evaluate_terms`),
        ``beta``, ``lr`` (the learning rate of the epoch, from
        ``config.lr_schedule``) and ``seconds``. For :class:`pplvae.ImageData` ``train_*``
        are measured after the epoch on a fixed subset of the training set as
        large as the test set; for other data ``train_elbo`` is the mean of
        the objective over the epoch's steps, and ``test_*`` need ``test_data``.

    Writing ``run_dir`` holds its lock (:func:`pplvae.runs.run_lock`) throughout.

    Data parallel: when the caller has initialized ``torch.distributed``
    (e.g. :func:`pplvae.distributed.init_from_env` under ``torchrun``), every
    rank calls ``fit`` with the same arguments; ``config.batch_size`` is the
    per-rank batch, the global batch is ``batch_size x world size`` (both
    saved under ``"distributed"`` in ``config.json``), each rank's random
    stream is seeded with :func:`pplvae.distributed.rank_seed` (rank 0 keeps
    ``config.seed``), the metrics are over all ranks' data, and rank 0 alone
    holds the lock and writes the files while the others wait at a barrier.
    ``on_epoch`` is called on every rank (with the same metrics). Resuming
    restores every rank's random stream.

    Raises:
        ValueError: the data's width does not match the model's ``x_dim``;
            training or test data held as tensors with no rows, with different
            leading sizes or with NaN or infinite values (rows named); a
            ``Dataset`` of length 0 or a loader that yields no minibatch; the
            model and guide sample different latent sites; on ``resume``,
            another model, data set or seed than the saved run's, or
            ``config.epochs`` below the epochs done.
        TypeError: ``model`` lacks ``model``/``guide``, or data of an unknown kind.
        FileExistsError: ``run_dir`` holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
        pplvae.RunLockedError: another process is writing ``run_dir``.
        pplvae.CheckpointError: the checkpoint to resume from is damaged or unsafe.
        NonFiniteLossError: a loss or gradient went NaN or infinite (more than
            ``config.max_skipped_steps`` times), or the epoch's ELBO did.
        OSError: a file cannot be written (read-only folder, disk full).
    """
    config = TrainConfig() if config is None else config
    for method in ("model", "guide", "parameters"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"fit trains an object with model and guide methods and parameters() (a PyroModule); "
                            f"{type(model).__name__} has no {method}.")
    if isinstance(data, ImageData):
        x_dim = getattr(getattr(model, "config", None), "x_dim", data.x_dim)
        if x_dim != data.x_dim:
            raise ValueError(
                f"The model expects x_dim={x_dim} but {data.name} images have {data.x_dim} pixels; "
                f"build the model with x_dim={data.x_dim}."
            )
    check_data(data)
    check_data(test_data, "the test data")
    run_dir = None if run_dir is None else Path(run_dir)
    if resume and not (run_dir / CHECKPOINT).exists():
        load_checkpoint(run_dir / CHECKPOINT)  # raises FileNotFoundError before the folder is made
    with run_lock(run_dir) if run_dir is not None and distributed.is_rank0() else contextlib.nullcontext():
        return _fit(model, data, config, run_dir, resume, progress, run_config, on_epoch, test_data, objective)


def _fit(model, data, config, run_dir, resume, progress, run_config, on_epoch, test_data, objective) -> pd.DataFrame:
    if run_dir is not None and not resume and (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another folder.")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT, keys=CHECKPOINT_KEYS) if resume else None

    if checkpoint is None:
        init_from_data(model, data)  # before the Trainer: under DDP it broadcasts the weights it starts from
    trainer = Trainer(model, config, objective)
    writer = run_dir is not None and distributed.is_rank0()
    if isinstance(data, ImageData):
        data = data.to(trainer.device)
    if checkpoint is not None:
        saved = checkpoint.get("config") or {}
        run_config = run_config if run_config is not None else {**saved, "train": asdict(config)}
        run_config = _with_world(run_config, config)
        run_config, changes = resumed_config(saved, run_config, checkpoint["epoch"])
        trainer.load_state_dict(checkpoint)
        trainer.rebase_learning_rate(config.learning_rate, "scheduler" in checkpoint)
        logger.info("resuming %s after epoch %d%s", run_dir, trainer.epoch,
                    f" with {describe_changes(changes)}" if changes else "")
    else:
        pyro.set_rng_seed(distributed.rank_seed(config.seed))
    if run_config is None:
        run_config = default_run_config(model, data, config)
    run_config = _with_world(run_config, config)
    with pyro.validation_enabled(config.validate):
        trainer.check(data)
    if writer:
        save_json(run_dir / CONFIG, run_config)

    first_epoch = trainer.epoch
    with pyro.validation_enabled(config.validate):
        while trainer.epoch < config.epochs:
            start = time.perf_counter()
            lr = trainer.optimizer.param_groups[0]["lr"]
            train_elbo = trainer.train_epoch(data, progress)
            trainer.epoch += 1
            trainer.scheduler.step()
            metrics = trainer.epoch_metrics(data, test_data)
            # ImageData's metrics hold train_elbo on a fixed training subset; other data keep the epoch's mean
            row = {"epoch": trainer.epoch, "train_elbo": train_elbo, **metrics, "lr": lr,
                   "seconds": time.perf_counter() - start}
            if not all(math.isfinite(row[k]) for k in ("train_elbo", "test_elbo") if k in row):
                raise NonFiniteLossError(f"the ELBO after epoch {trainer.epoch} is not finite (train "
                                         f"{row['train_elbo']}, test {row.get('test_elbo')}); the last good "
                                         "checkpoint is kept.")
            trainer.history.append(row)
            logger.info("epoch %d: train ELBO %.2f, test ELBO %s nats", row["epoch"], row["train_elbo"],
                        f"{row['test_elbo']:.2f}" if "test_elbo" in row else "-")
            state = trainer.state_dict() if run_dir is not None else None  # a collective in a group
            if writer:
                save_checkpoint(run_dir / CHECKPOINT, {**state, "config": run_config})
                save_csv(run_dir / METRICS, trainer.metrics())
            if run_dir is not None:
                distributed.barrier()  # the others wait until rank 0 has written
            if on_epoch is not None:
                compiled = getattr(trainer.step_loss, "module", trainer.step_loss)  # inside DDP in a group
                compiled_now = isinstance(compiled, CompiledLoss) and trainer.epoch == first_epoch + 1
                on_epoch({**row, "compile_seconds": compiled.compile_seconds} if compiled_now else row)
    return trainer.metrics()
