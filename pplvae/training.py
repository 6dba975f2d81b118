"""Fitting a model/guide pair by stochastic variational inference, with checkpoints and metrics.

The loss is built by :func:`pplvae.objectives.make_objective` from the
config (ELBO, analytic-KL ELBO, beta-VAE with optional KL warm-up, IWAE,
MMD-VAE); see :mod:`pplvae.objectives`.

References:
    [1] Kingma & Welling (2013), "Auto-Encoding Variational Bayes", algorithm 1.
    [2] Ranganath, Gerrish & Blei (2014), "Black Box Variational Inference".
    [3] Sønderby et al. (2016), "Ladder Variational Autoencoders" (KL warm-up).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pyro
import torch
from torch import nn

from pplvae.checkpoint import load_checkpoint, save_checkpoint, save_csv, save_json
from pplvae.data import ImageData
from pplvae.data.images import binarize
from pplvae.models import model_config
from pplvae.objectives import KERNELS, OBJECTIVES, kl_warmup_weight, make_objective
from pplvae.trace_elbo import FastTrace_ELBO

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CONFIG = "config.json"
TRAIN_SUBSET_BINARIZATION_SEED = 1  # the train-side metrics' fixed binarization
COMPILE_MODES = ("default", "reduce-overhead")


@dataclass
class TrainConfig:
    """How to fit: the optimiser, the schedule, the seed and the device.

    Attributes:
        epochs: passes over the training set (the total, also when resuming).
        batch_size: datapoints per SVI step.
        learning_rate: Adam's step size.
        seed: seeds torch, Python and NumPy (``pyro.set_rng_seed``): the same
            seed and config give the same numbers on the same machine.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        eval_batch_size: datapoints per chunk when computing the test ELBO.
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
        compile: train with :class:`CompiledLoss`: the loss recorded once as an
            operator graph and compiled by ``torch.compile`` (the same values
            and gradients to float rounding; compile time once, about 10 to
            30 s on a CPU). Needs a model whose sites and Python constants are
            the same at every step, so not with ``kl_warmup``.
        compile_mode: ``torch.compile``'s mode: ``"default"``, or
            ``"reduce-overhead"`` (CUDA graphs, for small batches on a GPU).
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1000
    validate: bool = False
    objective: str = "elbo"
    beta: float = 1.0
    kl_warmup: float = 0.0
    num_particles: int = 1
    mmd_weight: float = 1000.0
    kernel: str = "gaussian"
    compile: bool = False
    compile_mode: str = "default"
    gradient: str = "standard"

    def __post_init__(self):
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
        if self.compile and self.gradient == "dreg":
            raise ValueError("gradient='dreg' weighs the guide's gradients with tensor hooks, which the graph "
                             "recorded by compile=True does not keep; train without --compile.")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}.")
        self.build_objective()  # raises ValueError on options that do not fit the objective
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        resolve_device(self.device)

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


class NegativeELBO(nn.Module):
    """The loss of one SVI step as a torch module: -ELBO per datapoint, in nats.

    ``forward(*args)`` calls ``objective.differentiable_loss(model.model,
    model.guide, *args)`` (a Pyro ELBO: summed over the minibatch) and divides
    by the minibatch size ``args[0].shape[0]``, so gradients are per-datapoint
    averages. Being an ``nn.Module`` that owns the model's parameters, it can
    be wrapped in ``torch.nn.parallel.DistributedDataParallel`` unchanged for
    data-parallel training under ``torchrun``.
    """

    def __init__(self, model: nn.Module, objective=None):
        super().__init__()
        self.model = model
        self.objective = objective if objective is not None else FastTrace_ELBO()

    def forward(self, *args) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.model.model, self.model.guide, *args)
        return loss / args[0].shape[0]


class CompiledLoss(nn.Module):
    """A loss module recorded once as an operator graph and compiled with ``torch.compile``.

    Pyro runs the model and guide through its effect handlers at every step;
    for a model whose sites, plates and Python constants do not change between
    steps, all that Python yields the same torch operators each time. On the
    first call ``forward`` records them with
    ``torch.fx.experimental.proxy_tensor.make_fx`` (symbolic shapes, so one
    recording serves every batch size; random draws are recorded as
    operators and drawn afresh at every call, from torch's generator as the
    eager loss draws them), then compiles that graph with ``torch.compile``
    (Inductor: the elementwise log-density arithmetic fused into few kernels).
    Later calls run the compiled graph on the module's current parameters, so
    the optimiser's in-place updates are seen. Values and gradients equal the
    eager loss's given the same seed, to float rounding.

    Not for models with data-dependent Python control flow or with constants
    that change between steps (KL warm-up's beta): the recording would keep
    the first step's choices.

    Args:
        loss: the eager loss module, e.g. :class:`NegativeELBO`; called as
            ``loss(*args)``, returning a scalar.
        mode: ``torch.compile``'s mode (``"default"``, ``"reduce-overhead"``).

    Attributes:
        compile_seconds: seconds the recording and the first compiled call
            took (None before the first call).
    """

    def __init__(self, loss: nn.Module, mode: str = "default"):
        super().__init__()
        self.loss = loss
        self.mode = mode
        self.compile_seconds: float | None = None
        self._compiled = None

    def _state(self) -> dict:
        return {**dict(self.loss.named_parameters()), **dict(self.loss.named_buffers())}

    def forward(self, *args) -> torch.Tensor:
        if self._compiled is None:
            start = time.perf_counter()
            from torch.fx.experimental.proxy_tensor import make_fx

            def loss(state, *args):
                return torch.func.functional_call(self.loss, state, args)

            with pyro.validation_enabled(False):
                graph = make_fx(loss, tracing_mode="symbolic")(self._state(), *args)
            # fallback_random: draws come from torch's generator, as in the eager loss
            options = {"fallback_random": True, "triton.cudagraphs": self.mode == "reduce-overhead"}
            self._compiled = torch.compile(graph, dynamic=True, options=options)
            out = self._compiled(self._state(), *args)
            self.compile_seconds = time.perf_counter() - start
            logger.info("recorded and compiled the loss in %.1f s", self.compile_seconds)
            return out
        return self._compiled(self._state(), *args)


class Trainer:
    """SVI for a model/guide pair: the config's objective, fused ``torch.optim.Adam``.

    The model is a ``PyroModule`` with module-local parameters (the VAE and
    its variants), so the optimiser holds ``model.parameters()`` directly and
    nothing goes through Pyro's global parameter store.

    Args:
        model: exposes ``model(*args)``, ``guide(*args)`` and
            ``batch_args(x, labels) -> args``.
        config: :class:`TrainConfig`.
        objective: a Pyro ELBO (anything with ``differentiable_loss``);
            default ``config.build_objective()``. Per-epoch split terms need
            ``loss_terms`` (every :mod:`pplvae.objectives` objective has it).

    Adam is the fused implementation on the CPU and CUDA (one kernel for all
    parameters instead of a Python loop over them; the same update up to
    float rounding).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, objective=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.loss = NegativeELBO(self.model, objective if objective is not None else config.build_objective())
        self.step_loss = CompiledLoss(self.loss, config.compile_mode) if config.compile else self.loss
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate,
                                          fused=self.device.type in ("cpu", "cuda"))
        self.epoch = 0
        self.history: list[dict] = []

    def step(self, *args) -> torch.Tensor:
        """One SVI step on a minibatch; returns the detached -ELBO per datapoint (no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step_loss(*args)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(self, data: ImageData, progress: bool = False) -> float:
        """One pass over the training set; returns the mean of the objective per datapoint
        over its steps (nats; the ELBO for ``"elbo"`` at beta 1). With ``kl_warmup``
        the objective's beta is set before every step."""
        from tqdm.auto import tqdm

        self.model.train()
        batches = data.train_batches(self.config.batch_size)
        total = torch.zeros((), device=self.device)
        n = data.x_train.shape[0]
        steps = -(-n // self.config.batch_size)
        bar = tqdm(batches, total=steps, desc=f"epoch {self.epoch + 1}", leave=False, mininterval=1.0,
                   disable=None if progress else True)  # None: no bar where stderr is not a terminal
        seen = 0
        for i, (x, labels) in enumerate(bar):
            if self.config.kl_warmup > 0:
                self.loss.objective.beta = self.config.beta_at(self.epoch + i / steps)
            total += self.step(*self.model.batch_args(x, labels)) * x.shape[0]
            seen += x.shape[0]
            if progress and (i % 50 == 0 or i == steps - 1):
                bar.set_postfix(elbo=f"{-total.item() / seen:.2f}")
        return -total.item() / n

    @torch.no_grad()
    def evaluate(self, data: ImageData) -> float:
        """The test set's ELBO per datapoint (nats), one sample of z per datapoint."""
        return self.evaluate_terms(data.test_batches(self.config.eval_batch_size))["elbo"]

    @torch.no_grad()
    def evaluate_terms(self, batches) -> dict[str, float]:
        """The objective's terms per datapoint over ``(x, labels)`` batches.

        Returns ``reconstruction`` (E_q log p(x|z), nats), ``kl`` (KL(q(z|x) ||
        p(z)), nats, estimated as the objective does), ``mmd`` for the MMD
        objective (MMD^2 of each batch against a prior sample, averaged over
        batches weighted by size; unitless), ``total`` (the objective at the
        current beta) and ``elbo`` = reconstruction - kl, one draw of z per
        datapoint (K draws averaged for IWAE, whose ``total`` is the K-sample
        bound).
        """
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for x, labels in batches:
            terms = self.loss.objective.loss_terms(self.model.model, self.model.guide, *self.model.batch_args(x, labels))
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            n += x.shape[0]
        means = {key: value.item() / n for key, value in sums.items()}
        return {**means, "elbo": means["reconstruction"] - means["kl"]}

    def epoch_metrics(self, data: ImageData) -> dict[str, float]:
        """Split terms after an epoch, per datapoint: ``train_*`` on the first
        ``len(x_test)`` training images (a fixed subset the size of the test
        set, or all of a smaller training set; binarized once with a fixed
        seed when the data are binarized, so train and test compare like for
        like), ``test_*`` on the test set, and the ``beta`` in force at the end
        of the epoch."""
        if self.config.kl_warmup > 0:
            self.loss.objective.beta = self.config.beta_at(self.epoch)
        size = self.config.eval_batch_size
        n = min(len(data.x_test), len(data.x_train))
        x_train = data.x_train[:n]
        if data.binarized:
            x_train = binarize(x_train, torch.Generator(x_train.device).manual_seed(TRAIN_SUBSET_BINARIZATION_SEED))
        y_train = None if data.y_train is None else data.y_train[:n]
        train = self.evaluate_terms(
            (x_train[i : i + size], None if y_train is None else y_train[i : i + size]) for i in range(0, n, size)
        )
        test = self.evaluate_terms(data.test_batches(size))
        row = {f"train_{key}": value for key, value in train.items()}
        row.update({f"test_{key}": value for key, value in test.items()})
        row["beta"] = self.loss.objective.beta
        return row

    def state_dict(self) -> dict:
        rng = {"pyro": pyro.util.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        pyro.util.set_rng_state(state["rng"]["pyro"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def metrics(self) -> pd.DataFrame:
        """Per-epoch metrics: epoch, train_elbo, test_elbo (nats per datapoint), the split terms
        ``{train,test}_{reconstruction,kl[,mmd],total}`` (per datapoint), beta, seconds."""
        columns = ["epoch", "train_elbo", "test_elbo"]
        for side in ("train", "test"):
            columns += [f"{side}_{key}" for key in ("reconstruction", "kl", "mmd", "total")
                        if not self.history or f"{side}_{key}" in self.history[0]]
        return pd.DataFrame(self.history, columns=columns + ["beta", "seconds"])


def default_run_config(model: nn.Module, data: ImageData, config: TrainConfig) -> dict:
    """The config saved with a run: the model's sizes, the data set and the training config."""
    return {
        "model": model_config(model),
        "data": {"dataset": data.name, "binarized": data.binarized,
                 "train_size": len(data.x_train), "test_size": len(data.x_test)},
        "train": asdict(config),
    }


def fit(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    run_config: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Fit ``model`` to ``data`` by SVI and return the per-epoch metrics.

    After every epoch the test ELBO is computed and, when ``run_dir`` is given,
    ``checkpoint.pt`` (model, optimiser, epoch, RNG states, metrics so far) and
    ``metrics.csv`` are written atomically, so a crash or Ctrl-C leaves the last
    good checkpoint and the metrics so far. ``config.json`` holds
    ``run_config`` (default: the training config) beside them.

    Args:
        model: a model/guide pair such as :class:`pplvae.VAE`, already built
            (seed torch with ``pyro.set_rng_seed(config.seed)`` before building
            it for reproducible initial weights).
        data: the data set, on any device (moved to the training device).
        config: :class:`TrainConfig`.
        run_dir: folder for the checkpoint, metrics and config; None keeps
            everything in memory.
        resume: continue the run in ``run_dir`` from its checkpoint up to
            ``config.epochs``; the result equals an uninterrupted run's.
        progress: show a tqdm progress bar with the running ELBO (on a terminal only).
        run_config: the JSON-ready config to save, ``{"model", "data", "train"}``;
            default: :func:`default_run_config`.
        on_epoch: called with each epoch's metrics row (with ``config.compile``, the
            first row also holds ``compile_seconds``, the one-off time of
            recording and compiling the loss, included in its ``seconds``).

    Returns:
        DataFrame with one row per epoch: ``epoch``, ``train_elbo``,
        ``test_elbo`` (nats per datapoint; higher is better), the objective's
        split terms per datapoint (``train_reconstruction``, ``train_kl``,
        ``train_mmd`` for the MMD objective, ``train_total``, and the same for
        ``test``; see :meth:`Trainer.evaluate_terms`), ``beta`` and
        ``seconds``. ``train_*`` are measured after the epoch on a fixed
        subset of the training set as large as the test set.

    Raises:
        ValueError: the data's width does not match the model's ``x_dim``.
        FileExistsError: ``run_dir`` holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
    """
    x_dim = getattr(getattr(model, "config", None), "x_dim", data.x_dim)
    if x_dim != data.x_dim:
        raise ValueError(
            f"The model expects x_dim={x_dim} but {data.name} images have {data.x_dim} pixels; "
            f"build the model with x_dim={data.x_dim}."
        )
    run_dir = None if run_dir is None else Path(run_dir)
    if run_dir is not None and not resume and (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another folder.")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT) if resume else None

    trainer = Trainer(model, config)
    data = data.to(trainer.device)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        logger.info("resuming %s after epoch %d", run_dir, trainer.epoch)
    else:
        pyro.set_rng_seed(config.seed)
    if run_config is None:
        run_config = default_run_config(model, data, config)
    if run_dir is not None:
        save_json(run_dir / CONFIG, run_config)

    first_epoch = trainer.epoch
    with pyro.validation_enabled(config.validate):
        while trainer.epoch < config.epochs:
            start = time.perf_counter()
            trainer.train_epoch(data, progress)
            trainer.epoch += 1
            row = dict(epoch=trainer.epoch, **trainer.epoch_metrics(data), seconds=time.perf_counter() - start)
            trainer.history.append(row)
            logger.info("epoch %(epoch)d: train ELBO %(train_elbo).2f, test ELBO %(test_elbo).2f nats", row)
            if run_dir is not None:
                save_checkpoint(run_dir / CHECKPOINT, {**trainer.state_dict(), "config": run_config})
                save_csv(run_dir / METRICS, trainer.metrics())
            if on_epoch is not None:
                compiled_now = isinstance(trainer.step_loss, CompiledLoss) and trainer.epoch == first_epoch + 1
                on_epoch({**row, "compile_seconds": trainer.step_loss.compile_seconds} if compiled_now else row)
    return trainer.metrics()
