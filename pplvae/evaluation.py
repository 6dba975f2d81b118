"""Evaluating a trained run: log p(x) on a data split by importance sampling (``evaluation.csv``) or AIS (``evaluation-ais.csv``).

References:
    [1] Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders",
        section 5.2: test log-likelihood estimated with K = 5000 samples.
    [2] Wu, Burda, Salakhutdinov & Grosse (2017), "On the Quantitative Analysis
        of Decoder-Based Generative Models": annealed importance sampling.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from pplvae.ais import annealed_importance_sampling
from pplvae.runs import save_csv
from pplvae.data.images import TEST_BINARIZATION_SEED, binarize
from pplvae.marginal import log_marginal_likelihood
from pplvae.runs import load_run

logger = logging.getLogger(__name__)

EVALUATION = "evaluation.csv"
EVALUATION_AIS = "evaluation-ais.csv"
SPLITS = ("test", "train")
ESTIMATORS = ("is", "ais")


def evaluate_run(
    run_dir: str | os.PathLike,
    num_samples: int = 5000,
    split: str = "test",
    max_examples: int | None = None,
    device: str | torch.device = "auto",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    max_memory_bytes: int | None = None,
    progress: bool = False,
    compile: bool = False,
    estimator: str = "is",
    num_steps: int = 500,
    num_chains: int = 16,
    initial: str = "guide",
) -> pd.DataFrame:
    """Estimate log p(x) of a trained run's model on a split and write ``RUN/evaluation.csv``.

    Loads the run with :func:`pplvae.load_run`, takes the split's images (the
    first ``max_examples`` of them), builds the model's arguments with
    ``model.batch_args(x, labels)`` and runs
    :func:`pplvae.log_marginal_likelihood` with K = ``num_samples`` after
    ``pyro.set_rng_seed(seed)``. Binarized (Bernoulli) data are scored on a
    fixed binarization: the test set's own, and for the training set one drawn
    with the test set's seed, so that numbers mean what the papers mean.

    Args:
        run_dir: a run folder written by ``pplvae train`` / :func:`pplvae.fit`.
        num_samples: K, importance samples per datapoint (Burda et al. use 5000).
        split: ``"test"`` or ``"train"``.
        max_examples: evaluate only the first N images of the split; None: all.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        data_dir, download: where the run's data set is read from (as in ``load_dataset``).
        seed: seeds torch/Pyro before sampling.
        max_memory_bytes: the estimator's memory budget per chunk, bytes; None:
            :func:`pplvae.marginal.default_memory_budget` of the device.
        progress: show a tqdm progress bar over the K x N samples (on a terminal only).
        compile: compile the estimator's chunks (see :func:`pplvae.log_marginal_likelihood`);
            ``seconds`` then includes the compile time.
        estimator: ``"is"`` (importance sampling from the guide, K = ``num_samples``)
            or ``"ais"`` (:func:`pplvae.annealed_importance_sampling` from
            ``initial``, ``"guide"`` or ``"prior"``, with ``num_steps`` T and
            ``num_chains`` C; a stochastic lower bound, written to
            ``RUN/evaluation-ais.csv``).

    Returns:
        one-row DataFrame, nats per datapoint averaged over the split:
        ``elbo``, ``iwae_5``, ``iwae_50`` (where K allows), ``iwae_K``,
        ``log_px`` and its standard error ``log_px_stderr``, ``ess_mean``,
        ``ess_min``, ``pareto_k_max``, ``num_samples`` (K), ``num_data`` (N),
        then ``split``, ``seconds`` (wall time of the estimate) and
        ``samples_per_second`` (K N / seconds). The same table is written
        atomically to ``RUN/evaluation.csv``. For AIS the columns of
        :meth:`pplvae.ais.AISResult.to_frame` (``log_px``, ``log_px_stderr``,
        ``acceptance_mean``, ``step_size_mean``, ``num_steps``,
        ``num_chains``, ``initial``, ``num_data``), ``split`` and ``seconds``.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: unknown split or estimator, or ``max_examples`` / ``num_samples`` below 1.
        DataNotFoundError: the run's data set cannot be read.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive number of images, got {max_examples}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    run = load_run(run_dir, device)
    data = run.load_data(data_dir, download)
    x, labels = _split(data, split)
    x, labels = x[:max_examples], (None if labels is None else labels[:max_examples])
    args = run.model.batch_args(x, labels)
    if estimator == "ais":
        return _evaluate_ais(run, run_dir, args, split, seed, progress, num_steps, num_chains, initial)

    logger.info("estimating log p(x) of %s on %d %s images with K=%d", run_dir, len(x), split, num_samples)
    pyro.set_rng_seed(seed)
    # disable=None: no bar where stderr is not a terminal (a log file would get one line per update)
    with tqdm(total=num_samples * len(x), unit="sample", unit_scale=True, disable=None if progress else True,
              desc=f"log p(x), K={num_samples}") as bar:
        start = time.perf_counter()
        result = log_marginal_likelihood(
            run.model.model, run.model.guide, *args, num_samples=num_samples,
            max_memory_bytes=max_memory_bytes, progress=bar.update, compile=compile,
        )
        seconds = time.perf_counter() - start
    table = result.to_frame()
    table["split"] = split
    table["seconds"] = seconds
    table["samples_per_second"] = num_samples * len(x) / seconds
    save_csv(Path(run_dir) / EVALUATION, table)
    return table


def _evaluate_ais(run, run_dir, args, split, seed, progress, num_steps, num_chains, initial) -> pd.DataFrame:
    """AIS from the guide on the split; the table of :func:`evaluate_run` for ``estimator="ais"``."""
    num_data = len(args[0])
    logger.info("AIS on %s: %d %s images, T=%d, C=%d", run_dir, num_data, split, num_steps, num_chains)
    pyro.set_rng_seed(seed)
    with tqdm(total=num_data, unit="image", disable=None if progress else True,
              desc=f"AIS, T={num_steps}, C={num_chains}") as bar:
        start = time.perf_counter()
        result = annealed_importance_sampling(run.model.model, run.model.guide, *args, num_steps=num_steps,
                                              num_chains=num_chains, initial=initial, progress=bar.update)
        seconds = time.perf_counter() - start
    table = result.to_frame()
    table["split"] = split
    table["seconds"] = seconds
    save_csv(Path(run_dir) / EVALUATION_AIS, table)
    return table


def _split(data, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N, x_dim) and labels (N,) or None of a split, fixed-binarized where the data are."""
    if split == "test":
        return data.x_test, data.y_test
    x = data.x_train
    if data.binarized:
        generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
        x = binarize(x.cpu(), generator).to(x.device)
    return x, data.y_train
