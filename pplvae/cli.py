"""The ``pplvae`` command: train, sample, reconstruct, evaluate, quadrants. Thin: it parses flags and calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyro

from pplvae.data import DATASETS, IMAGE_SHAPES, DataNotFoundError, load_dataset
from pplvae.evaluation import EVALUATION, EVALUATION_AIS, ESTIMATORS, SPLITS, evaluate_run
from pplvae.models import MODELS, build_model, model_config
from pplvae.networks import ACTIVATIONS, DECODERS
from pplvae.objectives import GRADIENTS, KERNELS, OBJECTIVES
from pplvae.plots import plot_reconstructions, plot_run, plot_samples
from pplvae.runs import load_run
from pplvae.training import COMPILE_MODES, TrainConfig, fit

DEFAULT_LIKELIHOOD = {"mnist": "bernoulli", "freyface": "gaussian"}


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder holding the data (default: $PPLVAE_DATA_DIR, then ~/.cache/pplvae)")
    parser.add_argument("--download", action="store_true", help="download MNIST if no folder holds it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplvae", description="VAEs as Pyro model/guide pairs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's progress")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit a model by SVI and write a run folder")
    train.add_argument("--dataset", choices=DATASETS, default="mnist")
    train.add_argument("--model", choices=sorted(MODELS), default="vae")
    train.add_argument("--z-dim", type=int, default=50)
    train.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200], metavar="H")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh")
    train.add_argument("--likelihood", choices=sorted(DECODERS),
                       help="default: bernoulli for mnist (binarized), gaussian for freyface")
    train.add_argument("--epochs", type=int, default=10, help="total epochs (also when resuming)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--objective", choices=OBJECTIVES, default="elbo",
                       help="elbo (sampled KL), elbo-analytic (closed-form KL), iwae (K-sample bound), "
                            "mmd (MMD-VAE)")
    train.add_argument("--beta", type=float, default=1.0, help="KL weight for elbo / elbo-analytic (beta-VAE)")
    train.add_argument("--kl-warmup", type=float, default=0.0, metavar="EPOCHS",
                       help="raise beta linearly from 0 over this many epochs")
    train.add_argument("--num-particles", type=int, default=1, metavar="K", help="samples of z per datapoint")
    train.add_argument("--gradient", choices=GRADIENTS, default="standard",
                       help="gradient estimator for --objective iwae: standard or dreg (doubly reparameterized)")
    train.add_argument("--mmd-weight", type=float, default=1000.0, metavar="LAMBDA",
                       help="per-datapoint weight of MMD^2 for --objective mmd")
    train.add_argument("--kernel", choices=KERNELS, default="gaussian", help="MMD kernel for --objective mmd")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--compile", action="store_true",
                       help="record the loss once and compile it with torch.compile (compile time once, "
                            "10 to 30 s on a CPU; not with --kl-warmup)")
    train.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                       help="torch.compile mode; reduce-overhead uses CUDA graphs (small batches on a GPU)")
    train.add_argument("--train-size", type=int, help="use only the first N training images")
    train.add_argument("--test-size", type=int, help="use only the first N test images")
    train.add_argument("--out", type=Path, help="run folder (default: runs/DATASET-MODEL)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_data_flags(train)

    sample = commands.add_parser("sample", help="write a grid of samples from p(x) of a trained run")
    sample.add_argument("run", type=Path)
    sample.add_argument("--num-samples", type=int, default=64)
    sample.add_argument("--out", type=Path, help="PNG path (default: RUN/samples.png)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto")

    recon = commands.add_parser("reconstruct", help="write test images beside their reconstructions")
    recon.add_argument("run", type=Path)
    recon.add_argument("--num-images", type=int, default=16)
    recon.add_argument("--out", type=Path, help="PNG path (default: RUN/reconstructions.png)")
    recon.add_argument("--device", default="auto")
    _add_data_flags(recon)

    evaluate = commands.add_parser("evaluate", help="estimate log p(x) of a trained run by importance sampling or AIS")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--estimator", choices=ESTIMATORS, default="is",
                          help="is: importance sampling from the guide; ais: annealed importance sampling with HMC")
    evaluate.add_argument("--num-samples", type=int, default=5000, help="K, importance samples per image (is)")
    evaluate.add_argument("--num-steps", type=int, default=500, metavar="T", help="annealing steps (ais)")
    evaluate.add_argument("--num-chains", type=int, default=16, metavar="C", help="AIS chains per image (ais)")
    evaluate.add_argument("--initial", choices=("guide", "prior"), default="guide",
                          help="AIS's distribution at beta = 0 (ais; prior for flow guides, whose density inverts the flow)")
    evaluate.add_argument("--split", choices=SPLITS, default="test")
    evaluate.add_argument("--max-examples", type=int, help="evaluate only the first N images of the split")
    evaluate.add_argument("--max-memory-mb", type=float,
                          help="memory budget per chunk, MiB (default: 64 per torch thread on a CPU, up to 4096 on a GPU)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_data_flags(evaluate)

    quadrants = commands.add_parser(
        "quadrants", help="Sohn et al.'s MNIST quadrant task: baseline vs. CVAE, table and pictures")
    quadrants.add_argument("--observed", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3],
                           help="numbers of observed quadrants")
    quadrants.add_argument("--epochs", type=int, default=5, help="CVAE epochs (Pyro's tutorial: up to 50)")
    quadrants.add_argument("--baseline-epochs", type=int, help="default: --epochs")
    quadrants.add_argument("--num-samples", type=int, default=100, help="importance samples per test image")
    quadrants.add_argument("--batch-size", type=int, default=128)
    quadrants.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    quadrants.add_argument("--seed", type=int, default=0)
    quadrants.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    quadrants.add_argument("--train-size", type=int, help="use only the first N training images")
    quadrants.add_argument("--test-size", type=int, help="use only the first N test images")
    quadrants.add_argument("--out", type=Path, default=Path("runs/quadrants"), help="folder for runs, CSV, pictures")
    _add_data_flags(quadrants)
    return parser


def train(args: argparse.Namespace) -> None:
    run_dir = args.out or Path("runs") / f"{args.dataset}-{args.model}"
    if args.resume:
        previous = load_run(run_dir, device="cpu").config
        run_config = {**previous, "train": {**previous["train"], "epochs": args.epochs}}
    else:
        likelihood = args.likelihood or DEFAULT_LIKELIHOOD[args.dataset]
        train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                   seed=args.seed, device=args.device, objective=args.objective,
                                   beta=args.beta, kl_warmup=args.kl_warmup, num_particles=args.num_particles,
                                   mmd_weight=args.mmd_weight, kernel=args.kernel, compile=args.compile,
                                   compile_mode=args.compile_mode, gradient=args.gradient)
        run_config = {
            "model": {"name": args.model, "z_dim": args.z_dim, "hidden_dims": args.hidden_dims,
                      "activation": args.activation, "likelihood": likelihood},
            "data": {"dataset": args.dataset, "binarized": likelihood == "bernoulli",
                     "train_size": args.train_size, "test_size": args.test_size},
            "train": asdict(train_config),
        }
    config = TrainConfig(**run_config["train"])
    data = load_dataset(run_config["data"]["dataset"], args.data_dir, args.download,
                        **{k: v for k, v in run_config["data"].items() if k != "dataset"})
    pyro.set_rng_seed(config.seed)
    model = build_model(**{"x_dim": data.x_dim, **run_config["model"]})
    run_config["model"] = model_config(model)

    def report(row):
        if "compile_seconds" in row:
            print(f"recorded and compiled the loss in {row['compile_seconds']:.1f} s (in epoch "
                  f"{row['epoch']}'s time)", flush=True)
        print(f"epoch {row['epoch']:3d}/{config.epochs}  train ELBO {row['train_elbo']:9.2f}  "
              f"test ELBO {row['test_elbo']:9.2f} nats/datapoint  ({row['seconds']:.1f} s)", flush=True)

    print(f"training {run_config['model']['name']} on {data.name} "
          f"({len(data.x_train)} train / {len(data.x_test)} test images) into {run_dir}", flush=True)
    start = time.perf_counter()
    metrics = fit(model, data, config, run_dir, resume=args.resume, progress=not args.no_progress,
                  run_config=run_config, on_epoch=report)
    seconds = time.perf_counter() - start
    paths = plot_run(model, data.to(next(model.parameters()).device), metrics, run_dir)
    print(f"final test ELBO: {metrics['test_elbo'].iloc[-1]:.2f} nats per datapoint "
          f"after {len(metrics)} epochs ({seconds:.0f} s)")
    print("pictures: " + ", ".join(str(p) for p in paths))


def sample(args: argparse.Namespace) -> None:
    run = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    image_shape = IMAGE_SHAPES[run.config["data"]["dataset"]]
    print(plot_samples(run.model, image_shape, args.out or args.run / "samples.png", args.num_samples))


def reconstruct(args: argparse.Namespace) -> None:
    run = load_run(args.run, args.device)
    data = run.load_data(args.data_dir, args.download)
    out = args.out or args.run / "reconstructions.png"
    print(plot_reconstructions(run.model, data.x_test, data.y_test, data.image_shape, out, args.num_images))


def evaluate(args: argparse.Namespace) -> None:
    table = evaluate_run(args.run, args.num_samples, args.split, args.max_examples, args.device,
                         args.data_dir, args.download, args.seed,
                         None if args.max_memory_mb is None else int(args.max_memory_mb * 2**20),
                         progress=not args.no_progress, estimator=args.estimator,
                         num_steps=args.num_steps, num_chains=args.num_chains, initial=args.initial)
    row = table.iloc[0]
    if args.estimator == "ais":
        print(f"{args.split} set, {int(row['num_data'])} images, AIS T = {int(row['num_steps'])}, "
              f"C = {int(row['num_chains'])} (nats per image)")
        print(f"  {'log p(x) >=':<16}{row['log_px']:10.2f} ± {row['log_px_stderr']:.2f} (standard error)")
        print(f"  {'acceptance':<16}{row['acceptance_mean']:10.2f}  ({row['seconds']:.1f} s)")
        print(f"written to {args.run / EVALUATION_AIS}")
        return
    k = int(row["num_samples"])
    lines = [("ELBO", row["elbo"])]
    lines += [(f"IWAE-{n}", row[f"iwae_{n}"]) for n in (5, 50) if f"iwae_{n}" in row]
    print(f"{args.split} set, {int(row['num_data'])} images, K = {k} (nats per image)")
    for name, value in lines:
        print(f"  {name:<16}{value:10.2f}")
    print(f"  {'log p(x)':<16}{row['log_px']:10.2f} ± {row['log_px_stderr']:.2f} (standard error)")
    print(f"  {'ESS mean / min':<16}{row['ess_mean']:10.1f} / {row['ess_min']:.1f} of {k}")
    print(f"  {'Pareto k max':<16}{row['pareto_k_max']:10.2f}")
    print(f"  {'samples/s':<16}{row['samples_per_second']:10.0f}  ({row['seconds']:.1f} s)")
    print(f"written to {args.run / EVALUATION}")


def quadrants(args: argparse.Namespace) -> None:
    from pplvae.quadrant_experiment import run_quadrant_experiment

    data = load_dataset("mnist", args.data_dir, args.download, binarized=True,
                        train_size=args.train_size, test_size=args.test_size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                         seed=args.seed, device=args.device)

    def report(row):
        print(f"{row['observed_quadrants']} quadrant(s)  {row['model']:17s} epoch {row['epoch']:3d}  "
              f"test ELBO {row['test_elbo']:8.2f} nats/image  ({row['seconds']:.1f} s)", flush=True)

    table = run_quadrant_experiment(data, args.out, tuple(args.observed), config, args.baseline_epochs,
                                    args.num_samples, on_epoch=report)
    print(table.to_string(index=False, float_format="%.2f"))
    print(f"table: {args.out / 'quadrants.csv'}; pictures: {args.out}/quadrants_q*.png")


COMMANDS = {"train": train, "sample": sample, "reconstruct": reconstruct, "evaluate": evaluate,
            "quadrants": quadrants}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pplvae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        COMMANDS[args.command](args)
    except (ValueError, DataNotFoundError, FileExistsError, FileNotFoundError) as error:
        print(f"pplvae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npplvae {args.command}: interrupted; the last good checkpoint and metrics.csv are kept "
              f"(continue with --resume).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
