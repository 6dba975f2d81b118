"""Sohn et al. (2015)'s MNIST quadrant experiment: the baseline and the CVAE for 1, 2 and 3 observed quadrants.

The task (:func:`quadrant_mask`): observe 1, 2 or 3 quadrants of a digit,
predict the rest. An image x (N, H*W) is split by a fixed boolean mask over
pixels into the observed pixels ``x_obs`` (N, D_obs) and the target pixels
``y`` (N, D_y), both in row-major pixel order; as in Pyro's CVAE example, 1
observed quadrant is the bottom left, 2 are the left half, 3 are all but the
bottom right. The models, written here as a user writes a model/guide pair:
the deterministic baseline :class:`QuadrantBaseline`, p(y | x), and the
conditional VAE :class:`QuadrantCVAE` (Sohn et al. section 3), both taking
``(x_obs, y)`` and trained with :func:`pplvae.fit` on plain MNIST through
their ``batch_args``.

For each number of observed quadrants: fit the baseline, start a CVAE from it
(:meth:`QuadrantCVAE.init_from_baseline`), fit the CVAE, and score both on the test set by their negative conditional
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
        Representation using Deep Conditional Generative Models", NeurIPS:
        section 3 (the CVAE, its bound on log p(y | x) and the importance-sampling
        estimate of the conditional log-likelihood), section 3.3 (the baseline
        network's prediction fed to the prior network, and the CVAE initialised
        from the trained baseline), section 5.1 (the MNIST quadrant task and
        its negative conditional log-likelihood).
    [2] Pyro's CVAE tutorial (https://pyro.ai/examples/cvae.html and its
        ``examples/cvae/``): 500-500 ReLU networks, z of 200, a frozen
        pre-trained baseline feeding the prior network; 50 epochs, negative
        ELBO on grey-scale targets, :data:`TUTORIAL_REFERENCE`.

A run folder of these models loads with ``pplvae.load_run(folder,
model=QuadrantCVAE(config))`` (they are not among pplvae's built-in models).

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pplvae import TrainConfig, fit, load_dataset, log_marginal_likelihood
from pplvae.cli import new_folder, positive_int
from pplvae.data import ImageData
from pplvae.models import model_config
from pplvae.networks import BernoulliDecoder, GaussianEncoder, concat
from pplvae.plots import save_image_grid
from pplvae.runs import save_csv

logger = logging.getLogger(__name__)


def quadrant_mask(image_shape: tuple[int, int], observed_quadrants: int) -> torch.Tensor:
    """Which pixels are observed: a bool tensor (H*W,), True on the observed quadrants.

    Raises:
        ValueError: ``observed_quadrants`` not 1, 2 or 3.

    Example:
        >>> quadrant_mask((2, 2), 1).tolist()  # bottom-left pixel of a 2x2 image
        [False, False, True, False]
        >>> int(quadrant_mask((28, 28), 3).sum())
        588
    """
    if observed_quadrants not in (1, 2, 3):
        raise ValueError(f"observed_quadrants must be 1, 2 or 3, got {observed_quadrants}.")
    height, width = image_shape
    observed = torch.zeros(height, width, dtype=torch.bool)
    observed[height // 2 :, : width // 2] = True  # bottom left
    if observed_quadrants >= 2:
        observed[:, : width // 2] = True  # left half
    if observed_quadrants == 3:
        observed[: height // 2, :] = True  # and the top half
    return observed.reshape(-1)


def split_quadrants(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_obs, y)``: the observed pixels (N, D_obs) and the target pixels (N, D_y) of x (N, H*W)."""
    return x[:, mask], x[:, ~mask]


def join_quadrants(x_obs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_quadrants`: whole images (N, H*W) from (N, D_obs) and (N, D_y).

    Example:
        >>> mask = quadrant_mask((2, 2), 2)
        >>> x = torch.arange(4.0).reshape(1, 4)
        >>> torch.equal(join_quadrants(*split_quadrants(x, mask), mask), x)
        True
    """
    x = y.new_empty(y.shape[0], mask.numel())
    x[:, mask] = x_obs
    x[:, ~mask] = y
    return x


@dataclass
class QuadrantConfig:
    """Sizes of the quadrant models (defaults: Pyro's CVAE tutorial).

    Attributes:
        x_dim: pixels of a whole image, from the data (784 for MNIST).
        observed_quadrants: 1, 2 or 3 (see :func:`quadrant_mask`).
        z_dim: latent dimensions of the CVAE (unused by the baseline).
        hidden_dims: widths of the hidden layers of every network.
        activation: as for :class:`pplvae.VAEConfig`.
        likelihood: only ``"bernoulli"``: the targets are binarized pixels.
        image_shape: (height, width); default a square of x_dim pixels.
    """

    x_dim: int
    observed_quadrants: int = 1
    z_dim: int = 200
    hidden_dims: tuple[int, ...] = (500, 500)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    image_shape: tuple[int, int] | None = None

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.image_shape is None:
            side = round(self.x_dim**0.5)
            if side * side != self.x_dim:
                raise ValueError(f"x_dim={self.x_dim} is not a square image; give image_shape.")
            self.image_shape = (side, side)
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.image_shape[0] * self.image_shape[1] != self.x_dim:
            raise ValueError(f"image_shape {self.image_shape} does not hold x_dim={self.x_dim} pixels.")
        if self.likelihood != "bernoulli":
            raise ValueError("The quadrant models score binarized pixels: likelihood must be 'bernoulli'.")
        if min(self.z_dim, *self.hidden_dims) <= 0:
            raise ValueError(f"z_dim and hidden_dims must be positive, got {self}.")
        quadrant_mask(self.image_shape, self.observed_quadrants)  # raises on a bad number


class _QuadrantModel(PyroModule):
    """What both quadrant models share: the mask, the split of an image, and its inverse."""

    config_class = QuadrantConfig

    def __init__(self, config: QuadrantConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mask", quadrant_mask(config.image_shape, config.observed_quadrants))
        self.obs_dim = int(self.mask.sum())  # D_obs
        self.target_dim = config.x_dim - self.obs_dim  # D_y

    def batch_args(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        """``(x_obs, y)`` of whole images x (N, x_dim): (N, D_obs) and (N, D_y); labels are unused."""
        return split_quadrants(x, self.mask)

    def join(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim) from observed pixels (N, D_obs) and target pixels (N, D_y)."""
        return join_quadrants(x, y, self.mask)

    def _check(self, x: torch.Tensor, y: torch.Tensor | None, who: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.obs_dim or (
            y is not None and y.shape != (x.shape[0], self.target_dim)
        ):
            raise ValueError(
                f"{who} expects x (N, {self.obs_dim}) observed and y (N, {self.target_dim}) target "
                f"pixels, got {tuple(x.shape)} and {None if y is None else tuple(y.shape)}; "
                f"split whole images with batch_args(x)."
            )


class QuadrantBaseline(_QuadrantModel):
    """The deterministic baseline: p(y | x) = prod_d Bernoulli(y_d; sigmoid(f_d(x))) ([1] section 5.1, "NN").

    A model with no latent variable and an empty guide: its ELBO is exactly
    log p(y | x), nats per image summed over the target pixels, so it trains
    with :func:`pplvae.fit` and is scored by the importance-sampling estimator
    unchanged. Site: the observed ``"y"`` (N, D_y) in the plate ``"data"``.

    Example:
        >>> baseline = QuadrantBaseline(QuadrantConfig(x_dim=784, observed_quadrants=2))
        >>> x, y = baseline.batch_args(torch.zeros(3, 784))
        >>> x.shape, y.shape
        (torch.Size([3, 392]), torch.Size([3, 392]))
        >>> float(pyro.infer.Trace_ELBO().loss(baseline.model, baseline.guide, x, y)) > 0
        True
    """

    name = "quadrant-baseline"

    def __init__(self, config: QuadrantConfig):
        super().__init__(config)
        self.net = BernoulliDecoder(self.obs_dim, self.target_dim, config.hidden_dims, config.activation)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "QuadrantBaseline.model")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", self.net(x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """No latent variables: nothing to sample."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of p(y | x), (N, D_y)."""
        return self.net.mean(x)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim): the observed pixels and the prediction's probabilities."""
        return self.join(x, self.predict(x))


class QuadrantCVAE(_QuadrantModel):
    """The CVAE of [1] section 3: prior network p(z | x), generation network p(y | x, z), guide q(z | x, y).

    model:  z | x ~ N(mu([x, ŷ(x)]), diag(sigma([x, ŷ(x)])^2)),  y | x, z ~ Bernoulli(logits=g([x, z]))
    guide:  z | x, y ~ N(z_loc([x, y]), diag(z_scale([x, y])^2))

    ŷ(x) is the prediction of a trained :class:`QuadrantBaseline` held inside
    the model with its weights frozen (``self.baseline``): the prior network
    sees the observed pixels and the baseline's guess for the rest ([1]
    section 3.3; Pyro's tutorial does the same). :meth:`init_from_baseline`
    also makes the generation network start as the baseline, so training
    starts from the baseline's p(y | x) and the ELBO bounds log p(y | x) in
    nats per image, summed over the target pixels. Sites, in the plate
    ``"data"``: ``"z"`` (N, z_dim) and the observed ``"y"`` (N, D_y).

    The paper's protocol, baseline first and then the CVAE started from it,
    is :func:`run_quadrant_experiment`.

    Example:
        >>> cvae = QuadrantCVAE(QuadrantConfig(x_dim=784, observed_quadrants=3))
        >>> args = cvae.batch_args(torch.zeros(3, 784))
        >>> loss = pyro.infer.Trace_ELBO().loss(cvae.model, cvae.guide, *args)
        >>> cvae.predict(args[0], num_samples=5).shape  # five draws of the mean of y for each input
        torch.Size([5, 3, 196])
    """

    name = "quadrant-cvae"

    def __init__(self, config: QuadrantConfig):
        super().__init__(config)
        hidden, act, d = config.hidden_dims, config.activation, config.x_dim
        self.baseline = QuadrantBaseline(config)
        self.baseline.requires_grad_(False)
        self.prior_net = GaussianEncoder(d, config.z_dim, hidden, act)  # p(z | x, ŷ(x)), input D_obs + D_y
        self.recognition_net = GaussianEncoder(d, config.z_dim, hidden, act)  # q(z | x, y)
        self.generation_net = BernoulliDecoder(self.obs_dim + config.z_dim, self.target_dim, hidden, act)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, y, "QuadrantCVAE.model")
        with pyro.plate("data", x.shape[0]):
            y_hat = self.baseline.predict(x)
            z = pyro.sample("z", dist.Normal(*self.prior_net(concat([x, y_hat]))).to_event(1))
            return pyro.sample("y", self.generation_net(concat([x, z])), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "QuadrantCVAE.guide")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.recognition_net(concat([x, y]))).to_event(1))

    # Helpers for initialisation and pictures; the math is all above.

    @torch.no_grad()
    def init_from_baseline(self, baseline: QuadrantBaseline) -> "QuadrantCVAE":
        """Start from a trained baseline: copy it into ``self.baseline`` and the generation network.

        The generation network g([x, z]) gets the baseline's weights on x and
        zero weights on z, so at the start p(y | x, z) = p_baseline(y | x) for
        every z and log p(y | x) equals the baseline's. Returns ``self``.

        Raises:
            ValueError: the baseline has other sizes or quadrants than this model.
        """
        if (baseline.config.observed_quadrants, baseline.config.hidden_dims, baseline.config.activation) != (
            self.config.observed_quadrants, self.config.hidden_dims, self.config.activation
        ) or baseline.config.x_dim != self.config.x_dim:
            raise ValueError(f"The baseline's config {baseline.config} does not match the CVAE's {self.config}.")
        self.baseline.load_state_dict(baseline.state_dict())
        first, source = self.generation_net.body[0], baseline.net.body[0]  # Linear(D_obs + z_dim -> h1)
        first.weight.zero_()
        first.weight[:, : self.obs_dim] = source.weight
        first.bias.copy_(source.bias)
        self.generation_net.body[1:].load_state_dict(baseline.net.body[1:].state_dict())
        self.generation_net.logits.load_state_dict(baseline.net.logits.state_dict())
        return self

    def predict(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Means of p(y | x, z) for z ~ p(z | x): (num_samples, N, D_y)."""
        y_hat = self.baseline.predict(x)
        prior = dist.Normal(*self.prior_net(concat([x, y_hat])))
        z = prior.sample((num_samples,))  # (S, N, z_dim)
        return self.generation_net.mean(concat([x, z]))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim): the observed pixels and p(y | x, z)'s mean at z = E_q[z | x, y]."""
        z_loc = self.recognition_net(concat([x, y]))[0]
        return self.join(x, self.generation_net.mean(concat([x, z_loc])))

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
    with ``pplvae.load_run(folder, model=...)`` given a model of the same config), a picture
    ``quadrants_q{n}.png`` per n (see :func:`plot_quadrant_predictions`)
    and the table ``quadrants.csv``.

    Args:
        data: binarized MNIST (:func:`pplvae.load_dataset`).
        train: the CVAE's training config; the baseline's is the same with
            ``baseline_epochs`` epochs (default the same number).
        num_samples: importance samples K per test image for the CVAE's -log p̂(y | x).
        on_epoch: called with each epoch's metrics row, plus ``model`` and ``observed_quadrants``.
        **model_config_fields: passed to :class:`QuadrantConfig`.

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
        baseline, cvae: a :class:`QuadrantBaseline` and a
            :class:`QuadrantCVAE` for the same quadrants.
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
    parser.add_argument("--observed", type=int, choices=[1, 2, 3], nargs="+", default=[1, 2, 3],
                        help="numbers of observed quadrants")
    parser.add_argument("--epochs", type=positive_int, default=5, help="CVAE epochs (Pyro's tutorial: up to 50)")
    parser.add_argument("--baseline-epochs", type=positive_int, help="default: --epochs")
    parser.add_argument("--num-samples", type=positive_int, default=100, help="importance samples per test image")
    parser.add_argument("--train-size", type=positive_int)
    parser.add_argument("--test-size", type=positive_int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=new_folder, default="runs/quadrants")
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
