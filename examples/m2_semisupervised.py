"""Kingma et al. (2014) M2: a semi-supervised VAE on MNIST with few labels, y summed out by TraceEnum_ELBO.

    python examples/m2_semisupervised.py --epochs 10 --labels-per-class 100 --num-samples 1000 --out runs/mnist-m2
    python examples/m2_semisupervised.py --epochs 1 --train-size 300 --labels-per-class 5 --test-size 20 \\
        --num-samples 5  # smoke test

The generative model treats the digit class y as a latent variable that is
observed for a few images:

    p(y) = Cat(1/10),  p(z) = N(0, I),  p(x | y, z) = Bernoulli(decoder(y, z))
    q(y | x) = Cat(classifier(x)),  q(z | x, y) = N(z_loc(x, y), diag(z_scale(x, y)^2))

Training data are items ``(x, y, labelled)``: x (x_dim,) binary pixels drawn
afresh at every read, y the label (0 where it is hidden) and labelled a bool.
In every minibatch the labelled rows live in a plate ``"labelled"`` where y is
observed (eq. (6) of the paper, L(x, y)), the unlabelled rows in a plate
``"data"`` where y is latent (eq. (7), U(x)); the sites differ by name, so
both kinds of rows share one minibatch and one objective. The guide's y site
is marked ``infer={"enumerate": "parallel"}``: ``TraceEnum_ELBO`` sums it over
the ten classes exactly instead of sampling it, which gives U(x) =
sum_y q(y|x) (L(x, y)) + H(q(y|x)) with one draw of z per class.

The classification term of eq. (9), alpha E_labelled[-log q(y|x)], is folded
into the model as an observed site ``"y_classified"`` ~ Cat(classifier(x)) in
the labelled plate, scaled by ``poutine.scale``: the ELBO then gains
alpha / N_labelled * log q(y|x) per labelled image, and the loss is J^alpha of
eq. (9) divided by the number of images (alpha = 0.1 N as in the paper, N the
training images). Pyro's ``examples/vae/ss_vae_M2.py`` takes the same term as
a second, auxiliary SVI loss; as one site of the model it trains with one
objective through ``pplvae.fit`` unchanged.

After training the script reports the test error of the classifier
(argmax_y q(y|x)) and log p(x) = log sum_y p(x, y) by importance sampling with
the unlabelled pair, ``model_unlabelled``/``guide_unlabelled``, whose guide
samples y ~ q(y|x) and z ~ q(z|x, y) (outside ``TraceEnum_ELBO`` the
enumeration mark does nothing).

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling (2014), "Semi-supervised
    Learning with Deep Generative Models", NeurIPS, section 3.1.2 (M2),
    eqs. (6), (7), (9) and table 1.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import pplvae
from pplvae.cli import new_folder, nonnegative_float, positive_float, positive_int
from pplvae.data import Binarize

MAX_PLATE_NESTING = 1  # one plate ("labelled" or "data") around every site; enumeration takes dim -2


class M2(PyroModule):
    """The M2 model of Kingma et al. (2014), section 3.1.2, as a Pyro model/guide pair.

    Networks are one-hidden-layer softplus MLPs as in the paper: the classifier
    x -> q(y|x), the encoder (x, y) -> (z_loc, z_scale), the decoder
    (y, z) -> Bernoulli logits of x. The first layers of encoder and decoder
    are ``W_x x + W_y onehot(y)`` (the same as one layer on the concatenation),
    so that with y enumerated over ten classes W_x x is computed once.

    Args:
        x_dim: pixels per (flattened) image, from the data.
        num_classes: values of y.
        z_dim: latent dimensions (50 in the paper).
        hidden: hidden units of each network (500 in the paper).
        classification_weight: alpha / N_labelled, the weight of log q(y|x) per
            labelled image in the model (eq. (9)); 0 leaves the classifier to
            learn from the unlabelled images alone (no ``y_classified`` site).

    Programs (x: (N, x_dim) binary; y: (N,) int64 labels; labelled: (N,) bool):

    * ``model(x, y, labelled)`` / ``guide(x, y, labelled)``: a mixed minibatch
      for ``TraceEnum_ELBO(max_plate_nesting=1)``; labelled rows in plate
      ``"labelled"`` (sites ``y_labelled`` observed, ``z_labelled``,
      ``x_labelled``, ``y_classified``), unlabelled rows in plate ``"data"``
      (sites ``y``, ``z``, ``x``; ``y`` enumerated by the guide).
    * ``model_unlabelled(x)`` / ``guide_unlabelled(x)``: p(x, y, z) and
      q(y|x) q(z|x, y) in plate ``"data"``, for log p(x) (nats per image).

    Raises:
        ValueError: a negative ``classification_weight``; from the programs,
            when x is not (N, x_dim) or y and labelled are not (N,).

    Example:
        >>> m2 = M2(x_dim=6, num_classes=3, z_dim=2, hidden=4, classification_weight=1.0)
        >>> x = torch.ones(4, 6); y = torch.tensor([2, 0, 0, 1]); labelled = torch.tensor([True, False, False, True])
        >>> loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, y, labelled)
    """

    def __init__(self, x_dim: int, num_classes: int = 10, z_dim: int = 50, hidden: int = 500,
                 classification_weight: float = 0.0):
        if not classification_weight >= 0:
            raise ValueError(f"classification_weight must be >= 0, got {classification_weight}.")
        super().__init__()
        self.x_dim, self.num_classes, self.z_dim = x_dim, num_classes, z_dim
        self.classification_weight = float(classification_weight)
        self.classifier = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, num_classes))
        self.encoder_x = nn.Linear(x_dim, hidden)
        self.encoder_y = nn.Linear(num_classes, hidden, bias=False)
        self.encoder_out = nn.Sequential(nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
        self.decoder_z = nn.Linear(z_dim, hidden)
        self.decoder_y = nn.Linear(num_classes, hidden, bias=False)
        self.decoder_out = nn.Sequential(nn.Softplus(), nn.Linear(hidden, x_dim))
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_scale", torch.ones(z_dim))
        self.register_buffer("y_probs", torch.full((num_classes,), 1.0 / num_classes))

    # The generative model p(y) p(z) p(x | y, z) and the guide q(y | x) q(z | x, y).

    def model(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """J^alpha of eq. (9) for a mixed minibatch: L(x, y) + alpha' log q(y|x) on labelled rows, U(x) on the rest."""
        self._check(x, y, labelled)
        if labelled.any():
            x_l, y_l = x[labelled], y[labelled]
            with pyro.plate("labelled", x_l.shape[0]):
                self._generate(x_l, y_l, suffix="_labelled")
                if self.classification_weight > 0:
                    with poutine.scale(scale=self.classification_weight):  # alpha / N_labelled, eq. (9)
                        pyro.sample("y_classified", dist.Categorical(logits=self.classifier(x_l)), obs=y_l)
        if not labelled.all():
            self.model_unlabelled(x[~labelled])

    def guide(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """q(z | x, y) on labelled rows; q(y | x) q(z | x, y) with y enumerated on the rest."""
        self._check(x, y, labelled)
        if labelled.any():
            x_l, y_l = x[labelled], y[labelled]
            with pyro.plate("labelled", x_l.shape[0]):
                pyro.sample("z_labelled", self._q_z(x_l, y_l))
        if not labelled.all():
            self.guide_unlabelled(x[~labelled])

    def model_unlabelled(self, x: torch.Tensor) -> None:
        """p(x, y, z) = p(y) p(z) p(x | y, z) for x (N, x_dim), y latent, in plate ``"data"``."""
        with pyro.plate("data", x.shape[0]):
            self._generate(x, None, suffix="")

    def guide_unlabelled(self, x: torch.Tensor) -> None:
        """q(y | x) q(z | x, y) for x (N, x_dim) in plate ``"data"``; y enumerated under ``TraceEnum_ELBO``."""
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": "parallel"})
            pyro.sample("z", self._q_z(x, y))

    def _generate(self, x: torch.Tensor, y: torch.Tensor | None, suffix: str) -> None:
        y = pyro.sample("y" + suffix, dist.Categorical(self.y_probs), obs=y)  # (N,), or (10, 1) enumerated
        z = pyro.sample("z" + suffix, dist.Normal(self.prior_loc, self.prior_scale).to_event(1))  # (..., N, z_dim)
        hidden = self.decoder_z(z) + self.decoder_y(self._one_hot(y))  # (..., N, hidden)
        pyro.sample("x" + suffix, dist.Bernoulli(logits=self.decoder_out(hidden)).to_event(1), obs=x)

    def _q_z(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z | x, y): x (N, x_dim), y (..., N) -> Normal of batch shape (..., N), event (z_dim,)."""
        hidden = self.encoder_x(x) + self.encoder_y(self._one_hot(y))  # (..., N, hidden)
        z_loc, z_log_scale = self.encoder_out(hidden).chunk(2, dim=-1)
        return dist.Normal(z_loc, z_log_scale.exp()).to_event(1)

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(self.prior_loc.dtype)  # (..., num_classes)

    def _check(self, x, y, labelled) -> None:
        if x.dim() != 2 or x.shape[1] != self.x_dim or y.shape != x.shape[:1] or labelled.shape != x.shape[:1]:
            raise ValueError(f"M2 expects x (N, {self.x_dim}), y (N,) and labelled (N,), got "
                             f"{tuple(x.shape)}, {tuple(y.shape)} and {tuple(labelled.shape)}.")

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q(y | x): x (N, x_dim) -> (N,) int64 classes."""
        return self.classifier(x).argmax(-1)


class PartlyLabelled(Dataset):
    """Items ``(x, y, labelled)`` of images of which only some carry their label.

    Args:
        images: (N, x_dim) pixels in [0, 1]; ``transform`` is applied to each
            item as it is read (e.g. :class:`pplvae.data.Binarize`).
        labels: (N,) int64 classes.
        labelled: (N,) bool; where False the item's y is 0, so that no code
            can read a hidden label.
        transform: a callable on one image, or None.

    Raises:
        ValueError: tensors of different lengths.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, transform=None):
        if not len(images) == len(labels) == len(labelled):
            raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(labelled)} labelled flags.")
        self.images, self.labelled, self.transform = images, labelled.bool(), transform
        self.labels = torch.where(self.labelled, labels, torch.zeros_like(labels))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.images[i] if self.transform is None else self.transform(self.images[i])
        return x, self.labels[i], self.labelled[i]


def balanced_labelled(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """A (N,) bool mask choosing ``per_class`` images of every class at random (all of a smaller class).

    Raises:
        ValueError: ``per_class`` below 1.
    """
    if per_class < 1:
        raise ValueError(f"labels per class must be >= 1, got {per_class}.")
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        rows = (labels == c).nonzero().squeeze(-1)
        mask[rows[torch.randperm(len(rows), generator=generator)[:per_class]]] = True
    return mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--labels-per-class", type=positive_int, default=100, help="labelled training images per digit")
    parser.add_argument("--z-dim", type=positive_int, default=50)
    parser.add_argument("--hidden", type=positive_int, default=500)
    parser.add_argument("--alpha", type=nonnegative_float,
                        help="weight of the classification term, eq. (9); default 0.1 N")
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples K per test image")
    parser.add_argument("--train-size", type=positive_int, help="train on the first N training images")
    parser.add_argument("--test-size", type=positive_int, help="score the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=new_folder, default="runs/mnist-m2")
    args = parser.parse_args()

    mnist = pplvae.load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    labelled = balanced_labelled(mnist.y_train, args.labels_per_class, torch.Generator().manual_seed(args.seed))
    train = PartlyLabelled(mnist.x_train, mnist.y_train, labelled, transform=Binarize())  # grey levels -> binary
    n_test = len(mnist.x_test)
    test = (mnist.x_test, torch.zeros(n_test, dtype=torch.long), torch.zeros(n_test, dtype=torch.bool))  # unlabelled
    alpha = 0.1 * len(train) if args.alpha is None else args.alpha
    print(f"{int(labelled.sum())} labelled and {int((~labelled).sum())} unlabelled training images; alpha {alpha:g}")

    config = pplvae.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                seed=args.seed, device=args.device)
    pyro.set_rng_seed(config.seed)
    m2 = M2(mnist.x_dim, z_dim=args.z_dim, hidden=args.hidden, classification_weight=alpha / int(labelled.sum()))

    def test_error() -> float:
        """The fraction of test images whose argmax_y q(y|x) is not their label."""
        device = m2.prior_loc.device
        return (m2.classify(mnist.x_test.to(device)) != mnist.y_test.to(device)).float().mean().item()

    def report(row):
        print(f"epoch {row['epoch']}: train J^alpha/N {row['train_elbo']:.2f}, test ELBO {row['test_elbo']:.2f} "
              f"nats, test error {100 * test_error():.2f}% ({row['seconds']:.0f} s)", flush=True)

    metrics = pplvae.fit(m2, train, config, args.out, test_data=test, on_epoch=report,
                         objective=TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING))
    print(metrics.to_string(index=False))

    m2.eval()
    print(f"test classification error of q(y|x): {100 * test_error():.2f}% on {n_test} images "
          f"(Kingma et al. 2014, table 1, M2: 11.97% with 100 labels, 3.60% with 1000)")
    pyro.set_rng_seed(config.seed)
    x_test = mnist.x_test.to(m2.prior_loc.device)
    estimate = pplvae.log_marginal_likelihood(m2.model_unlabelled, m2.guide_unlabelled, x_test,
                                              num_samples=args.num_samples)
    print(estimate.to_frame().to_string(index=False))  # log p(x) with y summed out, nats per test image


if __name__ == "__main__":
    main()
