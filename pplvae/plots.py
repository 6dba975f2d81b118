"""Pictures of a trained model: samples, reconstructions, ELBO curves, 2-D latent manifold and means.

Plotting is kept out of the training loop: the command line calls these after
(or independently of) :func:`pplvae.fit`. matplotlib is imported inside the
functions that need it, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from torchvision.utils import save_image

from pplvae.runs import CLASS_SAMPLES, ELBO_CURVES, LATENT_MEANS, MANIFOLD, RECONSTRUCTIONS, SAMPLES, atomic_write
from pplvae.data import ImageData
from pplvae.models import VAE


def save_image_grid(images: torch.Tensor, image_shape, path, nrow: int) -> Path:
    """Save (N, H*W) grey images in [0, 1] as one PNG grid of ``nrow`` images per row, atomically; returns the path."""
    grid = images.detach().float().cpu().reshape(-1, 1, *image_shape)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, nrow=nrow, padding=1, format="png"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


@torch.no_grad()
def plot_samples(model, image_shape, path, num_samples: int = 64) -> Path:
    """A grid of ``num_samples`` means of p(x|z), z ~ p(z) (``model.sample_images``).

    Raises:
        ValueError: the model has no ``sample_images`` (it predicts from an input, as a structured-output model does).
    """
    if not hasattr(model, "sample_images"):
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(f"The {name} model has no p(x) to sample from; try `pplvae reconstruct`.")
    model.eval()
    return save_image_grid(model.sample_images(num_samples), image_shape, path, nrow=int(num_samples**0.5))


@torch.no_grad()
def plot_reconstructions(model, x, labels, image_shape, path, num_images: int = 16) -> Path:
    """Test images (odd rows) above their reconstructions (even rows), ``num_images`` of each.

    Args:
        x: (N, x_dim) images; labels: (N,) or None, passed to ``model.batch_args``.
    """
    model.eval()
    x = x[:num_images]
    labels = None if labels is None else labels[:num_images]
    recon = model.reconstruct(*model.batch_args(x, labels))
    ncol = min(8, len(x))
    rows = []
    for start in range(0, len(x), ncol):
        rows += [x[start : start + ncol], recon[start : start + ncol]]
    return save_image_grid(torch.cat(rows), image_shape, path, nrow=ncol)


@torch.no_grad()
def plot_latent_manifold(model, image_shape, path, grid_size: int = 20) -> Path:
    """Kingma & Welling (2013), figure 4: decoder means over a 2-D latent grid.

    The grid's coordinates are the inverse Gaussian CDF of evenly spaced
    probabilities in (0, 1), so it covers the prior N(0, I) by its quantiles.

    Raises:
        ValueError: the model's latent space is not 2-D.
    """
    if model.config.z_dim != 2:
        raise ValueError(f"The latent manifold needs z_dim=2, the model has z_dim={model.config.z_dim}.")
    model.eval()
    device = model.prior_loc.device
    p = torch.linspace(0.5 / grid_size, 1 - 0.5 / grid_size, grid_size, device=device)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p)
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij")[::-1], dim=-1).reshape(-1, 2)
    return save_image_grid(model.decode(z), image_shape, path, nrow=grid_size)


@torch.no_grad()
def plot_latent_means(model, x, labels, path) -> Path:
    """Scatter of E_q[z|x] for the given images (first two latent dims), coloured by label."""
    model.eval()
    z_loc = model.encode(*model.batch_args(x, labels))[0].cpu()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(z_loc[:, 0], z_loc[:, 1], s=3, alpha=0.7)
    else:
        points = ax.scatter(z_loc[:, 0], z_loc[:, 1], c=labels.cpu(), cmap="tab10", s=3, alpha=0.7)
        fig.colorbar(points, ax=ax, label="label")
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title="latent means of the test set")
    return _save_figure(fig, path)


@torch.no_grad()
def plot_class_grid(model, image_shape, path, num_styles: int = 10) -> Path:
    """Class-conditional samples: one row per class, one column per z ~ p(z) (``model.sample_class_grid``).

    Down a column the latent style z is held and only the label y changes
    (Kingma et al. 2014, figure 1; Sohn et al. 2015).
    """
    model.eval()
    return save_image_grid(model.sample_class_grid(num_styles), image_shape, path, nrow=num_styles)


def plot_elbo_curves(metrics: pd.DataFrame, path) -> Path:
    """Train and test ELBO (nats per datapoint) per epoch, from a run's ``metrics.csv`` table.

    When the table has the objective's split terms (``*_reconstruction``,
    ``*_kl``, ``*_mmd``), a second panel shows them, so the trade-off between
    reconstruction and the latent term is visible; MMD^2 is unitless and gets
    its own axis.
    """
    plt = _pyplot()
    split = [c for c in metrics.columns if c.endswith(("_reconstruction", "_kl"))]
    mmd = [c for c in metrics.columns if c.endswith("_mmd")]
    fig, axes = plt.subplots(1, 2 if split else 1, figsize=(12 if split else 6, 4), squeeze=False)
    ax = axes[0, 0]
    metrics.plot(x="epoch", y=[c for c in metrics.columns if c.endswith("elbo")], marker="o", ax=ax)
    ax.set(ylabel="ELBO (nats per datapoint)", title="ELBO per epoch")
    ax.grid(alpha=0.3)
    if split:
        ax = axes[0, 1]
        terms = metrics.assign(**{c: -metrics[c] for c in split if c.endswith("_reconstruction")})
        terms = terms.rename(columns={c: c.replace("_reconstruction", " -E log p(x|z)") for c in split})
        terms.plot(x="epoch", y=[c.replace("_reconstruction", " -E log p(x|z)") for c in split],
                   marker="o", ax=ax, logy=True)
        ax.set(ylabel="nats per datapoint", title="reconstruction and KL terms")
        ax.grid(alpha=0.3)
        if mmd:
            metrics.plot(x="epoch", y=mmd, marker="s", linestyle="--", ax=ax.twinx()).set(ylabel="MMD$^2$")
    return _save_figure(fig, path)


def plot_run(model, data: ImageData, metrics: pd.DataFrame, run_dir: str | os.PathLike) -> list[Path]:
    """All pictures of a run into ``run_dir``; returns their paths.

    ``samples.png`` (for models that sample images), ``reconstructions.png``,
    ``elbo.png``, for class-conditional models ``class_samples.png`` (one
    row per class), and for models that decode with :meth:`pplvae.VAE.decode`
    (x from z alone) and a 2-D z ``manifold.png`` and ``latent_means.png``.
    """
    run_dir = Path(run_dir)
    x, labels = data.x_test, data.y_test
    paths = []
    if hasattr(model, "sample_images"):
        paths.append(plot_samples(model, data.image_shape, run_dir / SAMPLES))
    paths.append(plot_reconstructions(model, x, labels, data.image_shape, run_dir / RECONSTRUCTIONS))
    if len(metrics):
        paths.append(plot_elbo_curves(metrics, run_dir / ELBO_CURVES))
    if hasattr(model, "sample_class_grid"):
        paths.append(plot_class_grid(model, data.image_shape, run_dir / CLASS_SAMPLES))
    if getattr(type(model), "decode", None) is VAE.decode and model.config.z_dim == 2:  # decode(z) of z alone
        paths.append(plot_latent_manifold(model, data.image_shape, run_dir / MANIFOLD))
        paths.append(plot_latent_means(model, x, labels, run_dir / LATENT_MEANS))
    return paths
