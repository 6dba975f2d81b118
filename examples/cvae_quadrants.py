"""Sohn et al. (2015)'s MNIST quadrant experiment: the baseline and the CVAE for 1, 2 and 3 observed quadrants.

For each number of observed quadrants: fit the deterministic baseline, start
a CVAE from it (:meth:`pplvae.models.QuadrantCVAE.init_from_baseline`), fit the
CVAE, and score both on the test set by their negative conditional
log-likelihood -log p(y | x), nats per test image summed over the target
(unobserved) pixels. The baseline's is exact; the CVAE's is estimated by
importance sampling with the generic estimator
:func:`pplvae.marginal.log_marginal_likelihood`, q(z | x, y) as proposal,
with its ELBO and IWAE-50 bound beside it.

Our protocol differs from Pyro's tutorial (the reference numbers): targets and
inputs are binarized (dynamically for training, one fixed binarization for
test) and scored under a Bernoulli, where the tutorial scores grey levels
under a "relaxed" Bernoulli; we report -log p(y | x), not only the negative
ELBO; we train for a fixed number of epochs without early stopping on the
test set; the generation network also sees the observed pixels,
p(y | x, z) as in Sohn et al., where the tutorial's sees z only.

References:
    [1] K. Sohn, H. Lee, X. Yan (2015), "Learning Structured Output
        Representation using Deep Conditional Generative Models", NeurIPS,
        section 5.1 (negative conditional log-likelihood on MNIST quadrants).
    [2] Pyro's CVAE tutorial (https://pyro.ai/examples/cvae.html): 50 epochs,
        negative ELBO on grey-scale targets, :data:`TUTORIAL_REFERENCE`.

Writes the runs, ``quadrants.csv`` (-log p(y | x) of both models, nats per test
image over the unobserved pixels, beside Pyro's tutorial numbers) and one
picture per task into ``--out``.

    python examples/cvae_quadrants.py --epochs 5 --out runs/quadrants
    python examples/cvae_quadrants.py --epochs 1 --train-size 2000 --test-size 200 --num-samples 10  # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pyro
import torch

from pplvae import TrainConfig, fit, load_dataset, log_marginal_likelihood
from pplvae.data import ImageData
from pplvae.models import QuadrantBaseline, QuadrantConfig, QuadrantCVAE, model_config
from pplvae.plots import save_image_grid
from pplvae.runs import save_csv

logger = logging.getLogger(__name__)

#: Pyro's CVAE tutorial, 50 epochs with early stopping: negative ELBO (nats per
#: test image over the target pixels, grey-scale targets) of the baseline and the CVAE.
TUTORIAL_REFERENCE = pd.DataFrame(
    {
        "observed_quadrants": [1, 2, 3],
        "tutorial_baseline_neg_elbo": [100.4, 61.9, 25.4],
        "tutorial_cvae_neg_elbo": [71.8, 51.0, 24.2],
    }
)


def _run_config(model, data: ImageData, train: TrainConfig) -> dict:
    data_config = {"dataset": data.name, "binarized": data.binarized,
                   "train_size": len(data.x_train), "test_size": len(data.x_test)}
    return {"model": model_config(model), "data": data_config, "train": asdict(train)}


@torch.no_grad()
def evaluate_quadrants(
    baseline: QuadrantBaseline, cvae: QuadrantCVAE, x: torch.Tensor, num_samples: int = 100
) -> dict:
    """Test scores of a baseline and a CVAE on whole images x (N, x_dim), nats per image.

    Returns:
        ``baseline_nll`` (exact -log p(y | x)), ``cvae_neg_elbo``,
        ``cvae_neg_iwae_50`` (when ``num_samples`` >= 50), ``cvae_nll``
        (-log p̂(y | x) with K = ``num_samples``) and its standard error
        ``cvae_nll_stderr``: means over the N images of sums over the target pixels.
    """
    baseline.eval()
    cvae.eval()
    args = cvae.batch_args(x)
    exact = log_marginal_likelihood(baseline.model, baseline.guide, *args, num_samples=1)
    estimate = log_marginal_likelihood(cvae.model, cvae.guide, *args, num_samples=num_samples)
    scores = {"baseline_nll": -exact.log_px.mean().item(), "cvae_neg_elbo": -estimate.bounds[1].mean().item()}
    if 50 in estimate.bounds:
        scores["cvae_neg_iwae_50"] = -estimate.bounds[50].mean().item()
    scores["cvae_nll"] = -estimate.log_px.mean().item()
    scores["cvae_nll_stderr"] = estimate.stderr
    return scores


def run_quadrant_experiment(
    data: ImageData,
    out_dir: str | os.PathLike,
    observed_quadrants: tuple[int, ...] = (1, 2, 3),
    train: TrainConfig = TrainConfig(),
    baseline_epochs: int | None = None,
    num_samples: int = 100,
    progress: bool = False,
    on_epoch=None,
    **model_config_fields,
) -> pd.DataFrame:
    """Baseline and CVAE for each number of observed quadrants; writes runs, ``quadrants.csv`` and pictures.

    Into ``out_dir``: run folders ``q{n}-baseline`` and ``q{n}-cvae`` (loadable
    with :func:`pplvae.load_run`, scorable with ``pplvae evaluate``), a picture
    ``quadrants_q{n}.png`` per n (see :func:`plot_quadrant_predictions`)
    and the table ``quadrants.csv``.

    Args:
        data: binarized MNIST (:func:`pplvae.load_dataset`).
        train: the CVAE's training config; the baseline's is the same with
            ``baseline_epochs`` epochs (default the same number).
        num_samples: importance samples K per test image for the CVAE's -log p̂(y | x).
        on_epoch: called with each epoch's metrics row, plus ``model`` and ``observed_quadrants``.
        **model_config_fields: passed to :class:`pplvae.models.QuadrantConfig`.

    Returns:
        The table, one row per n: the scores of :func:`evaluate_quadrants`
        (nats per test image over the target pixels), ``target_pixels``,
        epochs and seconds of each fit, and the tutorial's reference numbers.

    Raises:
        ValueError: the data are not binarized, or a bad number of quadrants.
    """
    if not data.binarized:
        raise ValueError("The quadrant models score binary pixels: load the data with binarized=True.")
    out_dir = Path(out_dir)
    baseline_train = replace(train, epochs=baseline_epochs or train.epochs)
    rows = []
    for n in observed_quadrants:
        config = QuadrantConfig(x_dim=data.x_dim, observed_quadrants=n, image_shape=data.image_shape,
                                **model_config_fields)

        def report(row, name):
            if on_epoch is not None:
                on_epoch({**row, "model": name, "observed_quadrants": n})

        pyro.set_rng_seed(train.seed)
        baseline = QuadrantBaseline(config)
        start = time.perf_counter()
        fit(baseline, data, baseline_train, out_dir / f"q{n}-baseline", progress=progress,
            run_config=_run_config(baseline, data, baseline_train), on_epoch=lambda r: report(r, baseline.name))
        baseline_seconds = time.perf_counter() - start

        pyro.set_rng_seed(train.seed)
        cvae = QuadrantCVAE(config).init_from_baseline(baseline)
        start = time.perf_counter()
        fit(cvae, data, train, out_dir / f"q{n}-cvae", progress=progress,
            run_config=_run_config(cvae, data, train), on_epoch=lambda r: report(r, cvae.name))
        cvae_seconds = time.perf_counter() - start

        x_test = data.x_test.to(cvae.mask.device)
        start = time.perf_counter()
        scores = evaluate_quadrants(baseline, cvae, x_test, num_samples)
        rows.append({"observed_quadrants": n, "target_pixels": cvae.target_dim, **scores,
                     "num_samples": num_samples, "test_images": len(x_test),
                     "baseline_epochs": baseline_train.epochs, "cvae_epochs": train.epochs,
                     "baseline_seconds": baseline_seconds, "cvae_seconds": cvae_seconds,
                     "eval_seconds": time.perf_counter() - start})
        logger.info("%d quadrant(s): %s", n, rows[-1])
        plot_quadrant_predictions(baseline, cvae, x_test, data.image_shape, out_dir / f"quadrants_q{n}.png")
    table = pd.DataFrame(rows).merge(TUTORIAL_REFERENCE, on="observed_quadrants", how="left")
    save_csv(out_dir / "quadrants.csv", table)
    return table


@torch.no_grad()
def plot_quadrant_predictions(baseline, cvae, x, image_shape, path, num_images: int = 10,
                              num_samples: int = 3) -> Path:
    """Quadrant prediction (Sohn et al. 2015, figure 3): one column per test image.

    Rows: the observed quadrants (the rest grey), the truth, the baseline's
    prediction (pixel probabilities), then ``num_samples`` CVAE predictions
    (means of p(y | x, z) for z ~ p(z | x)).

    Args:
        baseline, cvae: a :class:`pplvae.models.QuadrantBaseline` and a
            :class:`pplvae.models.QuadrantCVAE` for the same quadrants.
        x: (N, x_dim) whole images; the first ``num_images`` are shown.
    """
    baseline.eval()
    cvae.eval()
    x = x[:num_images]
    x_obs, y = cvae.batch_args(x)
    rows = [cvae.join(x_obs, torch.full_like(y, 0.5)), x, baseline.reconstruct(x_obs, y)]
    rows += [cvae.join(x_obs, y_mean) for y_mean in cvae.predict(x_obs, num_samples)]
    return save_image_grid(torch.cat(rows), image_shape, path, nrow=len(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observed", type=int, nargs="+", default=[1, 2, 3], help="numbers of observed quadrants")
    parser.add_argument("--epochs", type=int, default=5, help="CVAE epochs (Pyro's tutorial: up to 50)")
    parser.add_argument("--baseline-epochs", type=int, help="default: --epochs")
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("runs/quadrants"))
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    train = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    table = run_quadrant_experiment(
        data, args.out, tuple(args.observed), train, baseline_epochs=args.baseline_epochs,
        num_samples=args.num_samples,
        on_epoch=lambda r: print(f"{r['observed_quadrants']} quadrant(s) {r['model']:18s} epoch {r['epoch']:3d} "
                                 f"test ELBO {r['test_elbo']:8.2f} ({r['seconds']:.0f} s)", flush=True),
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 2):
        print(table)
    print(f"table: {args.out / 'quadrants.csv'}; pictures: {args.out}/quadrants_q*.png")


if __name__ == "__main__":
    main()
