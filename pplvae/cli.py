"""The ``pplvae`` command: train, sample, reconstruct, evaluate. Thin: it parses flags and calls the library.

``train`` and ``evaluate`` run data-parallel when started by ``torchrun``
(``torchrun --standalone --nproc_per_node=N -m pplvae train ...``): every rank
joins the group (:func:`pplvae.distributed.init_from_env`), and rank 0 alone
prints and writes the run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyro
import torch

from pplvae import distributed
from pplvae.burda_protocol import BURDA_MODELS, run_burda_protocol
from pplvae.data import DATASETS, IMAGE_SHAPES, load_dataset
from pplvae.marginal import CPU_MEMORY_BYTES_PER_THREAD, CUDA_MEMORY_BYTES
from pplvae.evaluation import ESTIMATORS, SPLITS, evaluate_run
from pplvae.models import MODELS, VAEConfig, build_model, model_config
from pplvae.networks import ACTIVATIONS, DECODERS
from pplvae.objectives import GRADIENTS, KERNELS, OBJECTIVES
from pplvae.plots import plot_reconstructions, plot_run, plot_samples
from pplvae.runs import (BURDA_RESULTS, CHECKPOINT, EVALUATION, EVALUATION_AIS, RECONSTRUCTIONS, SAMPLES, RunError,
                         describe_changes, load_checkpoint, load_run, read_run_config, resume_changes, run_lock)
from pplvae.schedules import BURDA_STAGES, SCHEDULES, burda_epochs
from pplvae.training import COMPILE_MODES, NonFiniteLossError, TrainConfig, fit

DEFAULT_LIKELIHOOD = {"mnist": "bernoulli", "freyface": "gaussian"}
# Faults on the user's side: one line on stderr and a non-zero exit, no traceback (--debug shows it).
USER_ERRORS = (ValueError, OSError, RunError, NonFiniteLossError, MemoryError, torch.OutOfMemoryError)
# train's flags -> (section, key) of the run config, to check and apply them on --resume
RESUME_FLAGS = {
    "dataset": ("data", "dataset"), "train_size": ("data", "train_size"), "test_size": ("data", "test_size"),
    "model": ("model", "name"), "z_dim": ("model", "z_dim"), "hidden_dims": ("model", "hidden_dims"),
    "activation": ("model", "activation"), "likelihood": ("model", "likelihood"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "learning_rate"),
    "seed": ("train", "seed"), "objective": ("train", "objective"), "beta": ("train", "beta"),
    "kl_warmup": ("train", "kl_warmup"), "num_particles": ("train", "num_particles"),
    "mmd_weight": ("train", "mmd_weight"), "kernel": ("train", "kernel"), "device": ("train", "device"),
    "compile": ("train", "compile"), "compile_mode": ("train", "compile_mode"), "gradient": ("train", "gradient"),
    "adam_eps": ("train", "adam_eps"), "adam_betas": ("train", "adam_betas"),
    "lr_schedule": ("train", "lr_schedule"), "lr_step_size": ("train", "lr_step_size"),
    "lr_gamma": ("train", "lr_gamma"), "lr_min": ("train", "lr_min"), "clip_norm": ("train", "clip_norm"),
}


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts and sizes: ``text`` as an int >= 1.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer or is below 1
            (argparse prints it as a one-line usage error and exits with 2).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type`` for rates and scales: ``text`` as a finite float > 0.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number, or is not finite
            and positive (argparse prints it as a one-line usage error and exits with 2).
    """
    return _finite_float(text, lambda value: value > 0, "a positive finite number")


def nonnegative_float(text: str) -> float:
    """An argparse ``type`` for weights that may be switched off: ``text`` as a finite float >= 0.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number, or is negative or
            not finite (argparse prints it as a one-line usage error and exits with 2).
    """
    return _finite_float(text, lambda value: value >= 0, "a finite number >= 0")


def _finite_float(text: str, accept, requirement: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (it would write into the current folder)")
    return Path(text)


def new_folder(text: str) -> Path:
    """An argparse ``type`` for an output folder that holds nothing yet (missing or empty): ``text`` as a Path.

    For scripts that write a new run: checked before any data is loaded or
    any epoch trained, where :func:`pplvae.fit` would stop only after the
    data is loaded (a folder that holds a run) or the run's files would mix
    with another's.

    Raises:
        argparse.ArgumentTypeError: ``text`` is empty, or names a file or a
            folder that is not empty (argparse prints it as a one-line usage
            error and exits with 2).
    """
    path = _path(text)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise argparse.ArgumentTypeError(f"{text!r} already exists and is not empty: choose another folder "
                                         f"or delete that one")
    return path


_DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N (default auto)"


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder holding the data (default: $PPLVAE_DATA_DIR, then ~/.cache/pplvae)")
    parser.add_argument("--download", action="store_true", help="download MNIST if no folder holds it")


def _add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--adam-eps", type=float, default=defaults.adam_eps,
                        help="Adam's eps (default: Burda et al.'s 1e-4)")
    parser.add_argument("--adam-betas", type=float, nargs=2, default=list(defaults.adam_betas), metavar="B",
                        help="Adam's (beta1, beta2) (default %(default)s)")
    parser.add_argument("--lr-schedule", choices=SCHEDULES, default=defaults.lr_schedule,
                        help="learning rate per epoch: burda = 3^i epochs at lr * 10^(-i/7) for stage i; "
                             "step = times --lr-gamma every --lr-step-size epochs; cosine = down to --lr-min "
                             "(default %(default)s)")
    parser.add_argument("--lr-step-size", type=int, default=defaults.lr_step_size, metavar="EPOCHS",
                        help="epochs between decays of --lr-schedule step (default %(default)s)")
    parser.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma,
                        help="factor of each decay of --lr-schedule step (default %(default)s)")
    parser.add_argument("--lr-min", type=float, default=defaults.lr_min,
                        help="last epoch's learning rate under --lr-schedule cosine (default %(default)s)")
    parser.add_argument("--clip-norm", type=float,
                        help="clip the gradients' global L2 norm to this (default: no clipping)")


def _optimizer_options(args: argparse.Namespace) -> dict:
    return dict(adam_eps=args.adam_eps, adam_betas=tuple(args.adam_betas), lr_schedule=args.lr_schedule,
                lr_step_size=args.lr_step_size, lr_gamma=args.lr_gamma, lr_min=args.lr_min,
                clip_norm=args.clip_norm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplvae", description="VAEs as Pyro model/guide pairs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's progress")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit a model by SVI and write a run folder")
    model_defaults, train_defaults = VAEConfig(x_dim=1), TrainConfig()  # the flags' defaults are the configs'
    train.add_argument("--dataset", choices=DATASETS, default="mnist", help="(default %(default)s)")
    train.add_argument("--model", choices=sorted(MODELS), default="vae", help="(default %(default)s)")
    train.add_argument("--z-dim", type=positive_int, default=model_defaults.z_dim, help="(default %(default)s)")
    train.add_argument("--hidden-dims", type=positive_int, nargs="+", default=list(model_defaults.hidden_dims),
                       metavar="H", help="(default %(default)s)")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS), default=model_defaults.activation,
                       help="(default %(default)s)")
    train.add_argument("--likelihood", choices=sorted(DECODERS),
                       help="default: bernoulli for mnist (binarized), gaussian for freyface")
    train.add_argument("--epochs", type=int, default=train_defaults.epochs,
                       help="total epochs (also when resuming; default %(default)s)")
    train.add_argument("--batch-size", type=int, default=train_defaults.batch_size, help="(default %(default)s)")
    train.add_argument("--lr", type=float, default=train_defaults.learning_rate,
                       help="Adam's learning rate (of the first epoch; default %(default)s)")
    _add_optimizer_flags(train)
    train.add_argument("--seed", type=int, default=train_defaults.seed, help="(default %(default)s)")
    train.add_argument("--objective", choices=OBJECTIVES, default=train_defaults.objective,
                       help="elbo (sampled KL), elbo-analytic (closed-form KL), iwae (K-sample bound), "
                            "mmd (MMD-VAE); default %(default)s")
    train.add_argument("--beta", type=float, default=train_defaults.beta,
                       help="KL weight for elbo / elbo-analytic (beta-VAE; default %(default)s)")
    train.add_argument("--kl-warmup", type=float, default=train_defaults.kl_warmup, metavar="EPOCHS",
                       help="raise beta linearly from 0 over this many epochs (default %(default)s)")
    train.add_argument("--num-particles", type=int, default=train_defaults.num_particles, metavar="K",
                       help="samples of z per datapoint (default %(default)s)")
    train.add_argument("--gradient", choices=GRADIENTS, default=train_defaults.gradient,
                       help="gradient estimator for --objective iwae: standard or dreg (doubly "
                            "reparameterized; default %(default)s)")
    train.add_argument("--mmd-weight", type=float, default=train_defaults.mmd_weight, metavar="LAMBDA",
                       help="per-datapoint weight of MMD^2 for --objective mmd (default %(default)s)")
    train.add_argument("--kernel", choices=KERNELS, default=train_defaults.kernel,
                       help="MMD kernel for --objective mmd (default %(default)s)")
    train.add_argument("--device", default="auto", help=_DEVICE_HELP)
    train.add_argument("--compile", action="store_true",
                       help="record the loss and compile it with Inductor, torch.compile's compiler, once per "
                            "batch shape (compile time in the first epoch, tens of seconds on a CPU; objective elbo "
                            "with beta 1 and one particle, or iwae; not with --kl-warmup or --gradient dreg)")
    train.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                       help="torch.compile mode with --compile; reduce-overhead uses CUDA graphs "
                            "(small batches on a GPU; default %(default)s)")
    train.add_argument("--train-size", type=positive_int, help="use only the first N training images")
    train.add_argument("--test-size", type=positive_int, help="use only the first N test images")
    train.add_argument("--out", type=_path, help="run folder (default: runs/DATASET-MODEL)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_data_flags(train)

    sample = commands.add_parser("sample", help="write a grid of samples from p(x) of a trained run")
    sample.add_argument("run", type=_path)
    sample.add_argument("--num-samples", type=positive_int, default=64,
                        help="images in the grid (default %(default)s)")
    sample.add_argument("--out", type=_path, help="PNG path (default: RUN/samples.png)")
    sample.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    sample.add_argument("--device", default="auto", help=_DEVICE_HELP)

    recon = commands.add_parser("reconstruct", help="write test images beside their reconstructions")
    recon.add_argument("run", type=_path)
    recon.add_argument("--num-images", type=positive_int, default=16, help="test images shown (default %(default)s)")
    recon.add_argument("--out", type=_path, help="PNG path (default: RUN/reconstructions.png)")
    recon.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_data_flags(recon)

    evaluate = commands.add_parser("evaluate", help="estimate log p(x) of a trained run by importance sampling or AIS")
    evaluate.add_argument("run", type=_path)
    eval_defaults = {name: p.default for name, p in inspect.signature(evaluate_run).parameters.items()}
    evaluate.add_argument("--estimator", choices=ESTIMATORS, default=eval_defaults["estimator"],
                          help="is: importance sampling from the guide; ais: annealed importance sampling with HMC "
                               "(default %(default)s)")
    evaluate.add_argument("--num-samples", type=positive_int, default=eval_defaults["num_samples"],
                          help="K, importance samples per image (is; default %(default)s)")
    evaluate.add_argument("--num-steps", type=positive_int, default=eval_defaults["num_steps"], metavar="T",
                          help="annealing steps (ais; default %(default)s)")
    evaluate.add_argument("--num-chains", type=positive_int, default=eval_defaults["num_chains"], metavar="C",
                          help="AIS chains per image (ais; default %(default)s)")
    evaluate.add_argument("--initial", choices=("guide", "prior"), default=eval_defaults["initial"],
                          help="AIS's distribution at beta = 0 (ais; prior for flow guides, whose density "
                               "inverts the flow; default %(default)s)")
    evaluate.add_argument("--split", choices=SPLITS, default=eval_defaults["split"], help="(default %(default)s)")
    evaluate.add_argument("--max-examples", type=positive_int, help="evaluate only the first N images of the split")
    evaluate.add_argument("--max-memory-mb", type=positive_float,
                          help=f"memory budget per chunk, MiB (default: {CPU_MEMORY_BYTES_PER_THREAD // 2**20} "
                               f"per torch thread on a CPU, up to {CUDA_MEMORY_BYTES // 2**20} on a GPU)")
    evaluate.add_argument("--seed", type=int, default=eval_defaults["seed"], help="(default %(default)s)")
    evaluate.add_argument("--device", default="auto", help=_DEVICE_HELP)
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate.add_argument("--compile", action="store_true",
                          help="compile the estimator with torch.compile (tens of seconds once; for long estimates)")
    _add_data_flags(evaluate)

    reproduce = commands.add_parser("reproduce", help="a paper's protocol as one command")
    papers = reproduce.add_subparsers(dest="paper", required=True)
    burda = papers.add_parser(
        "burda", help="Burda et al. (2016), MNIST: batch 20, the 8-stage schedule (3280 epochs), "
                      "then log p(x) with K=5000 on the test set and the active units")
    burda.add_argument("--model", choices=BURDA_MODELS, default="vae",
                       help="vae: one stochastic layer (50); hvae: two (100, 50) (default %(default)s)")
    burda.add_argument("--objective", choices=("elbo", "iwae"), default="elbo", help="(default %(default)s)")
    burda.add_argument("--num-particles", type=int, choices=(1, 5, 50), default=1, metavar="K",
                       help="k, samples per datapoint in training (1, 5 or 50; default %(default)s)")
    burda.add_argument("--stages", type=int, choices=range(1, BURDA_STAGES + 1), default=BURDA_STAGES,
                       metavar="S",
                       help="run stages 0..S-1 of the schedule only (8: 3280 epochs; 5: 121; default %(default)s)")
    burda.add_argument("--num-samples", type=positive_int, default=5000,
                       help="K of the log p(x) estimate (default %(default)s)")
    burda.add_argument("--kl-warmup", type=float, default=0.0, metavar="EPOCHS",
                       help="raise the KL weight from 0 to 1 over this many epochs (not in the paper; "
                            "keeps the two-layer model's top layer alive, docs/burda_protocol.md; default %(default)s)")
    burda.add_argument("--train-size", type=positive_int, help="use only the first N training images")
    burda.add_argument("--test-size", type=positive_int, help="use only the first N test images")
    burda.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    burda.add_argument("--device", default="auto", help=_DEVICE_HELP)
    burda.add_argument("--out", type=Path, help="run folder (default: runs/burda-MODEL-OBJECTIVE-kK)")
    burda.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    burda.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_data_flags(burda)

    parser.set_defaults(given=set())  # train's flags given on the command line, filled in by main
    parser.train_parser = train
    return parser


def _say(*args, **kwargs) -> None:
    """``print`` on rank 0 (or the only process); nothing on the other ranks."""
    if distributed.is_rank0():
        print(*args, **kwargs)


def _writer_lock(run_dir: Path):
    """The run folder's lock on rank 0, which writes it; nothing on the other ranks."""
    return run_lock(run_dir) if distributed.is_rank0() else contextlib.nullcontext()


def train(args: argparse.Namespace) -> None:
    run_dir = args.out or Path("runs") / f"{args.dataset}-{args.model}"
    if not args.resume:
        _train(args, run_dir, _new_run_config(args))
        return
    if not (run_dir / CHECKPOINT).exists():
        load_checkpoint(run_dir / CHECKPOINT)  # the clear FileNotFoundError, before any folder is made
    with _writer_lock(run_dir):  # held before the run is read
        saved, epochs_done = read_run_config(run_dir)
        run_config = {section: dict(value) if isinstance(value, dict) else value for section, value in saved.items()}
        for flag in args.given & set(RESUME_FLAGS):
            section, key = RESUME_FLAGS[flag]
            run_config[section][key] = getattr(args, flag)
        if "likelihood" in args.given:
            run_config["data"]["binarized"] = args.likelihood == "bernoulli"
        changes = resume_changes(saved, run_config, epochs_done)
        _say(f"resuming {run_dir} after epoch {epochs_done}"
              + (f" with {describe_changes(changes)}" if changes else ""), flush=True)
        _train(args, run_dir, run_config)


def _new_run_config(args: argparse.Namespace) -> dict:
    likelihood = args.likelihood or DEFAULT_LIKELIHOOD[args.dataset]
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                               seed=args.seed, device=args.device, objective=args.objective,
                               beta=args.beta, kl_warmup=args.kl_warmup, num_particles=args.num_particles,
                               mmd_weight=args.mmd_weight, kernel=args.kernel, compile=args.compile,
                               compile_mode=args.compile_mode, gradient=args.gradient, **_optimizer_options(args))
    return {
        "model": {"name": args.model, "z_dim": args.z_dim, "hidden_dims": args.hidden_dims,
                  "activation": args.activation, "likelihood": likelihood},
        "data": {"dataset": args.dataset, "binarized": likelihood == "bernoulli",
                 "train_size": args.train_size, "test_size": args.test_size},
        "train": asdict(train_config),
    }


def _train(args: argparse.Namespace, run_dir: Path, run_config: dict) -> None:
    config = TrainConfig.from_dict(run_config["train"])
    data = load_dataset(run_config["data"]["dataset"], args.data_dir, args.download,
                        **{k: v for k, v in run_config["data"].items() if k != "dataset"})
    _check_model_size(data.x_dim, run_config["model"])
    pyro.set_rng_seed(config.seed)
    model = build_model(**{"x_dim": data.x_dim, **run_config["model"]})
    run_config["model"] = model_config(model)

    def report(row):
        if not distributed.is_rank0():
            return
        if "compile_seconds" in row:
            print(f"recorded and compiled the loss in {row['compile_seconds']:.1f} s (in epoch "
                  f"{row['epoch']}'s time)", flush=True)
        print(f"epoch {row['epoch']:3d}/{config.epochs}  train ELBO {row['train_elbo']:9.2f}  "
              f"test ELBO {row['test_elbo']:9.2f} nats/datapoint  ({row['seconds']:.1f} s)", flush=True)

    _say(f"training {run_config['model']['name']} on {data.name} "
         f"({len(data.x_train)} train / {len(data.x_test)} test images) into {run_dir}", flush=True)
    if distributed.is_initialized():
        world = distributed.world_size()
        _say(f"data parallel: {world} processes x batch {config.batch_size} = global batch "
             f"{world * config.batch_size} ({distributed.dist.get_backend()})", flush=True)
    start = time.perf_counter()
    with _writer_lock(run_dir):  # fit takes it too; held here also while the pictures are drawn
        metrics = fit(model, data, config, run_dir, resume=args.resume, progress=not args.no_progress and
                      distributed.is_rank0(), run_config=run_config, on_epoch=report)
        seconds = time.perf_counter() - start
        paths = plot_run(model, data.to(next(model.parameters()).device), metrics, run_dir) \
            if distributed.is_rank0() else []
    distributed.barrier()
    _say(f"final test ELBO: {metrics['test_elbo'].iloc[-1]:.2f} nats per datapoint "
         f"after {len(metrics)} epochs ({seconds:.0f} s)")
    _say("pictures: " + ", ".join(str(p) for p in paths))


def _check_model_size(x_dim: int, model: dict) -> None:
    """Refuse, before allocating, a model whose weights, gradients and Adam state exceed the RAM."""
    hidden = list(model.get("hidden_dims", ()))
    z_dim = model.get("z_dim", 1)
    widths = [x_dim, *hidden, 2 * z_dim], [z_dim, *hidden[::-1], 2 * x_dim]  # encoder, decoder
    parameters = sum((a + 1) * b for layers in widths for a, b in zip(layers, layers[1:]))
    need = 4 * 4 * parameters  # float32 weights, gradients, Adam's two moments
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram:
        raise ValueError(f"a model with z_dim {z_dim} and hidden_dims {hidden} has about {parameters:.2g} "
                         f"parameters and needs about {need / 2**30:.3g} GiB to train; this machine has "
                         f"{ram / 2**30:.3g} GiB. Choose smaller --hidden-dims / --z-dim.")


def _png_path(out: Path | None, default: Path) -> Path:
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of a .png file.")
    return out or default


def sample(args: argparse.Namespace) -> None:
    out = _png_path(args.out, args.run / SAMPLES)
    run = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    image_shape = IMAGE_SHAPES[run.config["data"]["dataset"]]
    print(plot_samples(run.model, image_shape, out, args.num_samples))


def reconstruct(args: argparse.Namespace) -> None:
    out = _png_path(args.out, args.run / RECONSTRUCTIONS)
    run = load_run(args.run, args.device)
    data = run.load_data(args.data_dir, args.download)
    print(plot_reconstructions(run.model, data.x_test, data.y_test, data.image_shape, out, args.num_images))


def evaluate(args: argparse.Namespace) -> None:
    table = evaluate_run(args.run, args.num_samples, args.split, args.max_examples, args.device,
                         args.data_dir, args.download, args.seed,
                         None if args.max_memory_mb is None else int(args.max_memory_mb * 2**20),
                         progress=not args.no_progress and distributed.is_rank0(), compile=args.compile,
                         estimator=args.estimator, num_steps=args.num_steps, num_chains=args.num_chains,
                         initial=args.initial)
    if table is None:  # another rank than 0: rank 0 reports
        return
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
    pareto = row["pareto_k_max"]
    print(f"  {'Pareto k max':<16}" + (f"{pareto:10.2f}" if math.isfinite(pareto)
                                       else f"{'n/a':>10}  (needs 10 weights above the cutoff: K >= 50)"))
    print(f"  {'samples/s':<16}{row['samples_per_second']:10.0f}  ({row['seconds']:.1f} s)")
    print(f"written to {args.run / EVALUATION}")


def reproduce(args: argparse.Namespace) -> None:
    out = args.out or Path("runs") / f"burda-{args.model}-{args.objective}-k{args.num_particles}"
    data = load_dataset("mnist", args.data_dir, args.download, binarized=True,
                        train_size=args.train_size, test_size=args.test_size)
    epochs = burda_epochs(args.stages)

    def report(row):
        print(f"epoch {row['epoch']:4d}/{epochs}  lr {row['lr']:.2e}  train {row['train_elbo']:9.2f}  "
              f"test {row['test_elbo']:9.2f} nats/image (objective's ELBO)  ({row['seconds']:.1f} s)", flush=True)

    print(f"Burda et al. (2016) protocol: {args.model}, {args.objective} k={args.num_particles}, "
          f"{args.stages} of 8 stages ({epochs} epochs, batch 20) on {len(data.x_train)} training images, "
          f"then K={args.num_samples} on {len(data.x_test)} test images, into {out}", flush=True)
    table = run_burda_protocol(data, out, args.model, args.objective, args.num_particles, args.stages,
                               args.num_samples, args.seed, args.device, args.resume, args.data_dir,
                               on_epoch=report, progress=not args.no_progress, kl_warmup=args.kl_warmup)
    row = table.iloc[0]
    print(f"test NLL {row['test_nll']:.2f} ± {row['log_px_stderr']:.2f} nats (K={row['K']}, "
          f"{row['test_images']} images, {row['epochs']} epochs); Burda et al. Table 1: "
          f"{row['paper_nll']:.2f} (3280 epochs); test ELBO {row['test_elbo']:.2f}; "
          f"active units {row['active_units']}")
    print(table.to_string(index=False, float_format="%.2f"))
    print(f"written to {out / BURDA_RESULTS}")


COMMANDS = {"train": train, "sample": sample, "reconstruct": reconstruct, "evaluate": evaluate,
            "reproduce": reproduce}


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``train`` options given on the command line (not left at their defaults)."""
    for action in parser.train_parser._actions:  # set_defaults would feed SUPPRESS to the types
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "verbose", "debug", "given"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pplvae`` command; returns the exit status.

    0: done; 1: training diverged (a NaN or infinite loss); 2: a user-side
    fault (bad flag, data, run folder or checkpoint; a file that cannot be
    written), reported in one line on stderr (``--debug`` shows the
    traceback); 3: under torchrun, another rank failed or could not be
    reached (the last good checkpoint is kept); 130: interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        args.given = _given_flags(parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    # Pyro's own logger (its handler, no propagation) reports guesses such as max_plate_nesting at INFO
    logging.getLogger("pyro").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.command in ("train", "evaluate"):
            distributed.init_from_env()
        COMMANDS[args.command](args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = str(error).split("\nTrace Shapes:")[0].strip() or type(error).__name__  # no Pyro shape tables
        print(f"pplvae {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(error, NonFiniteLossError) else 2
    except RuntimeError as error:
        if args.debug or not distributed.is_lost_rank_error(error):
            raise
        print(f"pplvae {args.command}: error: rank {distributed.rank()} of {distributed.world_size()} lost "
              f"another rank (it died or cannot be reached: {str(error).strip().splitlines()[0]}); "
              + ("the last good checkpoint is kept, continue with --resume." if args.command == "train"
                 else "nothing was written."), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\npplvae {args.command}: interrupted; the last good checkpoint and metrics.csv are kept "
              f"(continue with --resume).", file=sys.stderr)
        return 130
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
