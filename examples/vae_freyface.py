"""Train Kingma & Welling's Gaussian-decoder VAE on Frey Face (section 5, appendix C.2).

    python examples/vae_freyface.py --epochs 200 --z-dim 2

Frey Face ships with pplvae, so this runs offline anywhere.
"""

import argparse

import pyro

import pplvae
from pplvae.cli import new_folder, positive_float, positive_int
from pplvae.plots import plot_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=200)
    parser.add_argument("--z-dim", type=positive_int, default=2)
    parser.add_argument("--hidden", type=positive_int, default=200)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=new_folder, default="runs/example-freyface")
    args = parser.parse_args()

    data = pplvae.load_dataset("freyface")
    config = pplvae.TrainConfig(epochs=args.epochs, batch_size=100, learning_rate=args.lr, device=args.device)
    pyro.set_rng_seed(config.seed)
    vae = pplvae.VAE(pplvae.VAEConfig(x_dim=data.x_dim, z_dim=args.z_dim, hidden_dims=(args.hidden,),
                                      likelihood="gaussian"))
    metrics = pplvae.fit(vae, data, config, run_dir=args.out, progress=True)
    plot_run(vae, data.to(vae.prior_loc.device), metrics, args.out)
    print(f"Frey Face test ELBO {metrics.test_elbo.iloc[-1]:.2f} nats per datapoint "
          f"after {args.epochs} epochs; run folder {args.out}")


if __name__ == "__main__":
    main()
