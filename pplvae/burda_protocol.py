"""Burda, Grosse & Salakhutdinov (2016)'s MNIST protocol as one call: train, estimate log p(x), count active units.

The protocol of their section 5 and Table 1: dynamically binarized MNIST,
batch 20, Adam (beta1 0.9, beta2 0.999, eps 1e-4), the staged schedule (stage
i = 0 ... 7 lasts 3^i epochs at lr 1e-3 * 10^(-i/7): 3280 epochs in all), the
decoder's output bias started at the logit of the mean training pixel; then
log p(x) of every test image (fixed binarization) by importance sampling with
K = 5000 samples from the guide, and the active units of each stochastic
layer (Var_x E_q[u | x] > 0.01). ``stages`` < 8 stops the schedule early (5
stages: 121 epochs) where the full one does not fit the machine; the table
says how many ran.

This module is what ``pplvae reproduce burda`` calls: the command line stays
a flag parser, and the protocol is an ordinary function a script can call
too. Unlike the other paper experiments (``examples/``), it lives in the
package because the issue asks for it as a command, and an installed
``pplvae`` command cannot import the repository's examples; it only composes
public pieces (:func:`pplvae.fit`, :func:`pplvae.evaluation.evaluate_run`,
:func:`pplvae.active_units.active_units`).

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, section 5 (architectures, training schedule) and
        Table 1 (test NLL, K = 5000): :data:`BURDA_TABLE_1`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pyro
import torch

from pplvae.active_units import active_units
from pplvae.marginal import _check_options
from pplvae.runs import BURDA_RESULTS, save_csv
from pplvae.data import ImageData
from pplvae.evaluation import evaluate_run
from pplvae.models import HVAE, VAE, HVAEConfig, VAEConfig
from pplvae.schedules import BURDA_STAGES, burda_epochs
from pplvae.training import TrainConfig, fit

logger = logging.getLogger(__name__)

__all__ = ["BURDA_MODELS", "BURDA_TABLE_1", "burda_model", "burda_train_config", "run_burda_protocol"]

#: Burda et al. (2016), Table 1, MNIST: test NLL (nats, K = 5000) by (model, objective, k).
BURDA_TABLE_1 = {
    ("vae", "elbo", 1): 86.76, ("vae", "elbo", 5): 86.47, ("vae", "elbo", 50): 86.35,
    ("vae", "iwae", 1): 86.76, ("vae", "iwae", 5): 85.54, ("vae", "iwae", 50): 84.78,
    ("hvae", "elbo", 1): 85.33, ("hvae", "elbo", 5): 85.01, ("hvae", "elbo", 50): 84.78,
    ("hvae", "iwae", 1): 85.33, ("hvae", "iwae", 5): 83.89, ("hvae", "iwae", 50): 82.90,
}
#: ``--model`` choices: one stochastic layer (784-200-200-50) or two (784-200-200-100-100-100-50).
BURDA_MODELS = ("vae", "hvae")


def burda_model(name: str, x_dim: int) -> VAE | HVAE:
    """Burda et al.'s architecture by name, tanh units ([1] section 5).

    ``"vae"``: z of 50, 200-200 networks. ``"hvae"``: :class:`pplvae.HVAE`'s
    defaults, z1 of 100 with 200-200 networks and z2 of 50 with 100-100 ones.

    Raises:
        ValueError: an unknown name.
    """
    if name == "vae":
        return VAE(VAEConfig(x_dim=x_dim, z_dim=50, hidden_dims=(200, 200), activation="tanh"))
    if name == "hvae":
        return HVAE(HVAEConfig(x_dim=x_dim))
    raise ValueError(f"Unknown model {name!r}; choose one of {BURDA_MODELS}.")


def burda_train_config(objective: str = "elbo", num_particles: int = 1, stages: int = BURDA_STAGES,
                       **overrides) -> TrainConfig:
    """Burda et al.'s training settings for the first ``stages`` stages ([1] section 5).

    Batch 20, lr 1e-3 under the ``"burda"`` schedule for ``burda_epochs(stages)``
    epochs (3280 for 8), Adam betas (0.9, 0.999) and eps 1e-4; ``objective``
    ``"elbo"`` (their VAE, k samples averaged) or ``"iwae"`` (the k-sample bound).
    ``overrides`` (seed, device, ...) replace any field.

    Raises:
        ValueError: ``stages`` outside 1..8, or a field the config rejects.
    """
    if not 1 <= stages <= BURDA_STAGES:
        raise ValueError(f"stages must be between 1 and {BURDA_STAGES}, got {stages}.")
    settings = dict(epochs=burda_epochs(stages), batch_size=20, learning_rate=1e-3, lr_schedule="burda",
                    adam_betas=(0.9, 0.999), adam_eps=1e-4, objective=objective, num_particles=num_particles)
    return TrainConfig(**{**settings, **overrides})


def run_burda_protocol(
    data: ImageData,
    out: str | os.PathLike,
    model: str = "vae",
    objective: str = "elbo",
    num_particles: int = 1,
    stages: int = BURDA_STAGES,
    num_samples: int = 5000,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    data_dir: str | os.PathLike | None = None,
    max_memory_bytes: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
    kl_warmup: float = 0.0,
) -> pd.DataFrame:
    """Train one model of [1]'s Table 1 with its protocol, then score it on the test set.

    Args:
        data: binarized MNIST (its ``train_size``/``test_size`` are recorded;
            the protocol is the whole of both).
        out: the run folder (``config.json``, ``checkpoint.pt``,
            ``metrics.csv``, ``evaluation.csv``, ``burda.csv``).
        model: ``"vae"`` or ``"hvae"`` (:func:`burda_model`).
        objective, num_particles: ``"elbo"`` or ``"iwae"`` with k = 1, 5 or 50.
        stages: schedule stages to run, 1 to 8 (8: 3280 epochs).
        num_samples: K of the log p(x) estimate (5000 in [1]).
        seed, device: as :class:`pplvae.TrainConfig`.
        resume: continue the run in ``out`` (the schedule resumes where it stopped).
        data_dir: where MNIST is read from again for the estimate.
        max_memory_bytes: the estimator's memory per chunk (None: the default).
        on_epoch: called with each epoch's metrics row.
        progress: progress bars on a terminal.
        kl_warmup: epochs of KL warm-up (:class:`pplvae.TrainConfig`; 0 as in
            [1]); the two-layer model needs it to keep its top layer at short
            budgets (docs/burda_protocol.md). ``"elbo"`` only.

    Returns:
        a one-row DataFrame, nats per test image: ``model``, ``objective``,
        ``k``, ``stages``, ``epochs``, ``batch_size``, ``train_images``,
        ``test_images``, ``K``, ``test_elbo``, ``iwae_5``, ``iwae_50``,
        ``log_px``, ``log_px_stderr``, ``test_nll`` (= -log_px),
        ``paper_nll`` (Table 1 of [1], 3280 epochs), ``active_units`` (per
        latent site, e.g. ``"z1: 20, z2: 5"``), ``train_seconds``,
        ``eval_seconds``; also written to ``out/burda.csv``.

    Raises:
        ValueError: an unknown model, objective or stage count, or ``num_samples``
            or ``max_memory_bytes`` not positive (checked before training).
        FileExistsError / FileNotFoundError: as :func:`pplvae.fit`.
    """
    _check_options(num_samples, max_memory_bytes)  # the estimate's arguments, before thousands of epochs
    config = burda_train_config(objective, num_particles, stages, seed=seed, device=device, kl_warmup=kl_warmup)
    pyro.set_rng_seed(seed)
    network = burda_model(model, data.x_dim)
    start = time.perf_counter()
    metrics = fit(network, data, config, out, resume=resume, progress=progress, on_epoch=on_epoch)
    train_seconds = float(metrics["seconds"].sum())
    logger.info("trained %s in %.0f s; estimating log p(x) with K=%d", out, time.perf_counter() - start, num_samples)

    estimate = evaluate_run(out, num_samples, device=device, data_dir=data_dir, seed=seed,
                            max_memory_bytes=max_memory_bytes, progress=progress).iloc[0]
    network.eval()
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        # 100 draws: E_q[z2 | x] averages over z1, whose noise would otherwise count as variance over x
        units = active_units(network.guide, data.x_test.to(next(network.parameters()).device), num_samples=100)
    row = {
        "model": model, "objective": objective, "k": num_particles, "kl_warmup": kl_warmup, "stages": stages,
        "epochs": config.epochs,
        "batch_size": config.batch_size, "train_images": len(data.x_train), "test_images": int(estimate["num_data"]),
        "K": num_samples, "test_elbo": estimate["elbo"], "iwae_5": estimate.get("iwae_5"),
        "iwae_50": estimate.get("iwae_50"), "log_px": estimate["log_px"],
        "log_px_stderr": estimate["log_px_stderr"], "test_nll": -estimate["log_px"],
        "paper_nll": BURDA_TABLE_1.get((model, objective, num_particles)),
        "active_units": ", ".join(f"{name}: {count}" for name, count in units.items()),
        "train_seconds": train_seconds, "eval_seconds": estimate["seconds"],
    }
    table = pd.DataFrame([row])
    save_csv(Path(out) / BURDA_RESULTS, table)
    return table
