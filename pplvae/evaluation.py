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

from pplvae import distributed
from pplvae.ais import annealed_importance_sampling
from pplvae.data.images import TEST_BINARIZATION_SEED, binarize
from pplvae.marginal import MarginalLikelihood, log_marginal_likelihood
from pplvae.runs import EVALUATION, EVALUATION_AIS, load_run, save_csv

logger = logging.getLogger(__name__)

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
    ``pyro.set_rng_seed(seed)`` (under torchrun: :func:`sharded_log_marginal_likelihood`,
    each rank on a contiguous share, rank 0 writing). Binarized (Bernoulli) data are scored on a
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
            ``seconds`` then includes what the first call of the process pays:
            the compiles and, without ``max_memory_bytes``, the chunk-size trials.
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
        atomically to ``RUN/evaluation.csv``. In a process group: on rank 0,
        over the whole split; None on the other ranks. For AIS the columns of
        :meth:`pplvae.ais.AISResult.to_frame` (``log_px``, ``log_px_stderr``,
        ``acceptance_mean``, ``step_size_mean``, ``num_steps``,
        ``num_chains``, ``initial``, ``num_data``), ``split`` and ``seconds``,
        written to ``RUN/evaluation-ais.csv`` by rank 0 alone, which runs
        every chain (AIS is not sharded).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: unknown split or estimator, or ``max_examples`` / ``num_samples`` below 1.
        DataNotFoundError: the run's data set cannot be read.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    _check_split(split)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive number of images, got {max_examples}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    if distributed.is_initialized():
        from pplvae.training import resolve_device  # training writes runs: imported here, not at the top

        device = distributed.local_device(resolve_device(device))  # "cuda" is the rank's own GPU
    run = load_run(run_dir, device)
    data = run.load_data(data_dir, download)
    x, labels = split_images(data, split)
    x, labels = x[:max_examples], (None if labels is None else labels[:max_examples])
    args = run.model.batch_args(x, labels)
    if estimator == "ais":
        return _evaluate_ais(run, run_dir, args, split, seed, progress, num_steps, num_chains, initial)

    logger.info("estimating log p(x) of %s on %d %s images with K=%d", run_dir, len(x), split, num_samples)
    share = len(range(len(x))[distributed.shard_range(len(x))]) if distributed.is_initialized() else len(x)
    # disable=None: no bar where stderr is not a terminal (a log file would get one line per update)
    with tqdm(total=num_samples * share, unit="sample", unit_scale=True, disable=None if progress else True,
              desc=f"log p(x), K={num_samples}") as bar:
        start = time.perf_counter()
        result = sharded_log_marginal_likelihood(
            run.model.model, run.model.guide, *args, num_samples=num_samples, seed=seed,
            max_memory_bytes=max_memory_bytes, progress=bar.update, compile=compile,
        )
        seconds = time.perf_counter() - start
    if result is None:
        return None
    table = result.to_frame()
    table["split"] = split
    table["seconds"] = seconds
    table["samples_per_second"] = num_samples * len(x) / seconds
    save_csv(Path(run_dir) / EVALUATION, table)
    return table


def _evaluate_ais(run, run_dir, args, split, seed, progress, num_steps, num_chains, initial) -> pd.DataFrame:
    """AIS from the guide on the split; the table of :func:`evaluate_run` for ``estimator="ais"``."""
    if not distributed.is_rank0():  # AIS runs in one process: under torchrun, rank 0 does it all
        return None
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


def sharded_log_marginal_likelihood(model, guide, *args, num_samples: int, seed: int = 0,
                                    **kwargs) -> MarginalLikelihood | None:
    """:func:`pplvae.log_marginal_likelihood` of ``model(*args)``, the datapoints shared among the ranks.

    Without a process group: ``pyro.set_rng_seed(seed)``, then the estimate
    on all N datapoints. In a group of W ranks: rank r seeds with
    ``pplvae.distributed.rank_seed(seed, r)`` (= ``seed + 1_000_003 r``) and
    estimates the contiguous rows :func:`pplvae.distributed.shard_range`
    (N, r, W) of every tensor argument with a leading dim (the others pass
    whole); the per-datapoint results (log p(x), bounds, ESS, Pareto k) are
    gathered to rank 0 in the original order. Rank 0's shard is therefore
    the same estimate as one process with ``seed`` on those rows; the other
    shards use other draws, so the W-rank result equals one process's within
    Monte Carlo error, and exactly the concatenation of one-process estimates
    of the shards with those seeds.

    Args:
        model, guide, *args: as :func:`pplvae.log_marginal_likelihood`; the first
            tensor argument's dim 0 runs over the N datapoints.
        num_samples: K.
        seed: the seed (rank 0's).
        **kwargs: passed on to :func:`pplvae.log_marginal_likelihood`.

    Returns:
        a :class:`pplvae.MarginalLikelihood` over all N datapoints (``chunk_shape``
        is rank 0's) on rank 0; None on the other ranks (a collective: every
        rank must call it).

    Raises:
        ValueError: fewer datapoints than ranks; the estimator's own errors.
    """
    if not distributed.is_initialized():
        pyro.set_rng_seed(seed)
        return log_marginal_likelihood(model, guide, *args, num_samples=num_samples, **kwargs)
    n = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0).shape[0]
    if n < distributed.world_size():
        raise ValueError(f"{n} datapoints cannot be shared by {distributed.world_size()} ranks; "
                         f"evaluate more datapoints or start fewer processes.")
    rows = distributed.shard_range(n)
    shard = tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
    pyro.set_rng_seed(distributed.rank_seed(seed))
    local = log_marginal_likelihood(model, guide, *shard, num_samples=num_samples, **kwargs)
    keys = sorted(local.bounds)
    fields = [local.log_px, *(local.bounds[k] for k in keys), local.ess, local.pareto_k]
    gathered = distributed.gather_in_order(torch.stack(fields, dim=-1))  # (N, 3 + len(keys))
    if gathered is None:
        return None
    log_px, *bounds, ess, pareto_k = gathered.unbind(-1)
    return MarginalLikelihood(log_px, dict(zip(keys, bounds)), ess, pareto_k, num_samples, local.chunk_shape)


def split_images(data, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The images that ``evaluate_run`` scores: (N, x_dim) images and (N,) labels (or None) of a split.

    ``"test"``: the data's test images (binarized MNIST's test set is one
    fixed binarization). ``"train"``: the training images, of binarized data
    one fixed binarization (seed ``TEST_BINARIZATION_SEED``) rather than a
    new draw, so that every evaluation scores the same images.

    Raises:
        ValueError: ``split`` is not ``"test"`` or ``"train"``.
    """
    _check_split(split)
    if split == "test":
        return data.x_test, data.y_test
    x = data.x_train
    if data.binarized:
        generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
        x = binarize(x.cpu(), generator).to(x.device)
    return x, data.y_train


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
