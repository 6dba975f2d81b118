"""Faults a user meets: unsafe or damaged checkpoints, divergence, two writers, kills, a full disk, bad input.

Each test asserts the message, the exit status (for the command line) and
that the files already there are intact.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.io
import torch

from pplvae import (VAE, CheckpointError, ImageData, NonFiniteLossError, RunLockedError, TrainConfig, VAEConfig,
                    fit, load_checkpoint, load_dataset, load_run, log_marginal_likelihood, save_checkpoint)
from pplvae.cli import main
from pplvae.runs import run_lock
from pplvae.training import Trainer

TINY = ["--train-size", "300", "--test-size", "100", "--z-dim", "2", "--hidden-dims", "16",
        "--batch-size", "100", "--no-progress", "--device", "cpu"]
REPO = pathlib.Path(__file__).resolve().parents[1]


def _data(n=64, x_dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, x_dim), 0.3), generator=g)
    return ImageData("synthetic", x, None, x[:16].clone(), None, (4, 4), False)


def _model(seed=0):
    pyro.set_rng_seed(seed)
    return VAE(VAEConfig(x_dim=16, z_dim=2, hidden_dims=(8,)))


@pytest.fixture
def run(tmp_path):
    """A one-epoch run folder on synthetic data."""
    fit(_model(), _data(), TrainConfig(epochs=1, batch_size=16, device="cpu"), tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def cli_run(tmp_path, data_dir):
    """A one-epoch ``pplvae train`` run on 300 MNIST images."""
    out = tmp_path / "cli"
    assert main(["train", "--epochs", "1", "--out", str(out), "--data-dir", str(data_dir), *TINY]) == 0
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- 1. safe loading


class _Marker:
    """Unpickling it would create a marker file: the harmless stand-in for os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


@pytest.mark.parametrize("command", [["sample"], ["evaluate"], ["train", "--resume", "--out"]])
def test_a_malicious_checkpoint_runs_no_code(run, tmp_path, capsys, command):
    marker = tmp_path / "marker"
    state = load_checkpoint(run / "checkpoint.pt")
    torch.save({**state, "payload": _Marker(marker)}, run / "checkpoint.pt")
    assert main([*command, str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt holds Python objects" in err and "not loaded" in err and "Traceback" not in err
    assert not marker.exists()


def test_resume_stays_bit_exact_with_weights_only_checkpoints(tmp_path):
    data, config = _data(), TrainConfig(epochs=2, batch_size=16, device="cpu")
    straight = _model()
    fit(straight, data, config)
    fit(_model(), data, TrainConfig(epochs=1, batch_size=16, device="cpu"), tmp_path / "split")
    resumed = _model(seed=5)
    fit(resumed, data, config, tmp_path / "split", resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("content, match", [
    (b"", "not a readable checkpoint"),
    (b"garbage, not a torch file", "not a readable checkpoint"),
    (b"\x80\x04\x95garbage", "not a readable checkpoint"),
    ("truncated", "not a readable checkpoint"),
    ("no keys", "lacks model"),
])
def test_a_damaged_checkpoint_is_one_clear_error_naming_the_file(run, capsys, content, match):
    path = run / "checkpoint.pt"
    if content == "truncated":
        content = path.read_bytes()[: path.stat().st_size // 2]
    elif content == "no keys":
        save_checkpoint(path, {"epoch": 1})
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as error:
        load_run(run, device="cpu")
    assert str(path) in str(error.value)
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pplvae sample: error: ") and str(path) in err and "Traceback" not in err


def test_debug_shows_the_traceback(run):
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        main(["--debug", "sample", str(run)])


# ---------------------------------------------------------------- 2. non-finite losses


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(run):
    before = _files(run)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+ of 4: the (loss|gradient) is not finite"):
        fit(_model(), _data(), TrainConfig(epochs=2, batch_size=16, learning_rate=1e30, device="cpu"), run,
            resume=True)
    after = _files(run)
    assert after["checkpoint.pt"] == before["checkpoint.pt"] and after["metrics.csv"] == before["metrics.csv"]
    assert all(torch.isfinite(p).all() for p in load_run(run, device="cpu").model.state_dict().values())


def test_the_command_line_exits_1_on_divergence_and_names_the_step(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--lr", "1000", "--out", str(out), "--data-dir", str(data_dir),
                 *TINY]) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 1, step" in err and "Traceback" not in err
    assert not (out / "checkpoint.pt").exists()


class _NaNEveryThirdStep:
    """Wraps an objective; its loss is NaN at every third call."""

    def __init__(self, objective):
        self.objective, self.calls = objective, 0

    def differentiable_loss(self, model, guide, *args):
        self.calls += 1
        loss = self.objective.differentiable_loss(model, guide, *args)
        return loss * float("nan") if self.calls % 3 == 0 else loss


@pytest.mark.parametrize("max_skipped_steps", [0, 1, 10])
def test_non_finite_steps_are_skipped_up_to_the_limit(max_skipped_steps):
    config = TrainConfig(batch_size=8, device="cpu", max_skipped_steps=max_skipped_steps)  # 8 steps: 2 are NaN
    trainer = Trainer(_model(), config, _NaNEveryThirdStep(config.build_objective()))
    with pyro.validation_enabled(False):  # as in fit (TrainConfig.validate): no NaN warnings
        if max_skipped_steps < 2:
            with pytest.raises(NonFiniteLossError, match=f"epoch 1, step {3 * (max_skipped_steps + 1)} of 8"):
                trainer.train_epoch(_data())
        else:
            assert np.isfinite(trainer.train_epoch(_data()))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_failing_site_is_named():
    trainer = Trainer(_model(), TrainConfig(device="cpu"))
    with torch.no_grad():
        for p in trainer.model.encoder.parameters():
            p.fill_(1e30)
    assert "sample site 'z'" in trainer.non_finite_site(_data().x_train)


@pytest.mark.parametrize("name", ["learning_rate", "beta", "mmd_weight", "kl_warmup"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_hyperparameters_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        TrainConfig(**{name: value})


# ---------------------------------------------------------------- 3. one writer per run folder

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pplvae.runs import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def _hold_lock(folder):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_gets_a_clear_error_and_a_dead_ones_lock_is_taken_over(tmp_path, data_dir, capsys, caplog):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        assert main(["train", "--epochs", "1", "--out", str(out), "--data-dir", str(data_dir), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"is being written by another process (pid {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing read or written
        with pytest.raises(RunLockedError):
            fit(_model(), _data(), TrainConfig(epochs=1, batch_size=16, device="cpu"), out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    with run_lock(out):  # the kernel dropped the dead process's lock: taken over
        assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert f"stale lock of process {holder.pid}" in caplog.text


def test_resume_of_a_locked_run_is_refused_before_reading_it(run, capsys):
    holder = _hold_lock(run)
    try:
        assert main(["train", "--resume", "--epochs", "2", "--out", str(run)]) == 2
        assert "being written by another process" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()


KILLED_WRITE = textwrap.dedent("""
    import sys, time
    from pplvae.runs import atomic_write
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
            f.flush()
        print("writing", flush=True)
        time.sleep(60)
    atomic_write(sys.argv[1], write)
""")


def test_kill_9_during_a_write_keeps_the_file_and_the_next_start_cleans_up(run):
    before = _files(run)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, str(run / "checkpoint.pt")],
                              stdout=subprocess.PIPE, text=True, env=env)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    assert list(run.glob(".checkpoint.pt.*.tmp"))
    assert _files(run)["checkpoint.pt"] == before["checkpoint.pt"]
    with run_lock(run):
        assert not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


# ---------------------------------------------------------------- a full disk, permissions


def _no_space(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_named_and_keeps_the_previous_checkpoint(cli_run, data_dir, capsys, monkeypatch):
    before = _files(cli_run)
    monkeypatch.setattr(pathlib.Path, "write_bytes", _no_space)  # how save_checkpoint writes its bytes
    assert main(["train", "--resume", "--epochs", "2", "--out", str(cli_run), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {cli_run / 'checkpoint.pt'}: No space left on device" in err and "Traceback" not in err
    assert _files(cli_run)["checkpoint.pt"] == before["checkpoint.pt"]
    assert not list(cli_run.glob(".*.tmp"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------- 4. --resume checks its flags


def test_resume_refuses_another_model_and_records_allowed_changes(cli_run, data_dir, capsys):
    before = _files(cli_run)
    for flags, match in [(["--z-dim", "10", "--lr", "0.5", "--objective", "iwae"], "model.z_dim 2 -> 10"),
                         (["--train-size", "200"], "data.train_size 300 -> 200"),
                         (["--epochs", "0"], "--epochs 0 must be at least that")]:
        code = main(["train", "--resume", "--epochs", "2", "--out", str(cli_run), *flags])
        assert code == 2 and match in capsys.readouterr().err
        assert _files(cli_run) == before
    assert main(["train", "--resume", "--epochs", "2", "--lr", "0.002", "--out", str(cli_run), "--no-progress",
                 "--data-dir", str(data_dir)]) == 0
    assert "with train.epochs 1 -> 2, train.learning_rate 0.001 -> 0.002" in capsys.readouterr().out
    config = json.loads((cli_run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["learning_rate"] == 0.002
    assert config["history"] == [{"after_epoch": 1, "changes": {"train.epochs": [1, 2],
                                                                "train.learning_rate": [0.001, 0.002]}}]
    assert main(["train", "--resume", "--epochs", "1", "--out", str(cli_run)]) == 2
    assert "already trained 2 epochs" in capsys.readouterr().err


def test_an_edited_config_is_not_silently_overwritten(cli_run, capsys):
    config = json.loads((cli_run / "config.json").read_text())
    config["model"]["z_dim"] = 10
    (cli_run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", "--epochs", "2", "--out", str(cli_run)]) == 2
    assert "config.json differs from the config in the checkpoint (model.z_dim 2 -> 10)" in capsys.readouterr().err
    assert json.loads((cli_run / "config.json").read_text())["model"]["z_dim"] == 10


# ---------------------------------------------------------------- 5. one line for every user-side fault


@pytest.mark.parametrize("argv, match", [
    (["sample", "{run}", "--num-samples", "0"], "must be a positive integer"),
    (["reconstruct", "{run}", "--num-images", "0"], "must be a positive integer"),
    (["evaluate", "{run}", "--max-memory-mb", "0"], "must be a positive finite number"),
    (["evaluate", "{run}", "--max-memory-mb", "-1"], "must be a positive finite number"),
    (["train", "--out", ""], "must not be empty"),
])
def test_nonsense_flags_are_refused_by_the_parser(run, capsys, argv, match):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(run=run) for a in argv])
    assert exit_.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["sample", "{run}", "--out", "{run}"], "is a folder; give the path of a .png file"),
    (["train", "--lr", "inf", "--out", "{tmp}/new"], "learning_rate must be a finite number"),
    (["train", "--hidden-dims", "1000000000000", "--out", "{tmp}/new", "--data-dir", "{data}", "--train-size", "10",
      "--test-size", "10"], "Choose smaller --hidden-dims"),
])
def test_user_side_faults_are_one_line_and_exit_2(run, tmp_path, data_dir, capsys, argv, match):
    before = _files(run)
    assert main([a.format(run=run, tmp=tmp_path, data=data_dir) for a in argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(run) == before and not (tmp_path / "new").exists()


def test_a_garbage_metrics_table_does_not_stop_evaluate(cli_run, data_dir, capsys):
    (cli_run / "metrics.csv").write_bytes(b"\x00\xff garbage \"unterminated\n1,2\n1,2,3,4\n")
    assert main(["evaluate", str(cli_run), "--num-samples", "2", "--max-examples", "3", "--data-dir", str(data_dir),
                 "--no-progress"]) == 0
    assert "log p(x)" in capsys.readouterr().out


def _mnist_copy(data_dir, tmp_path, edit):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(data_dir / "MNIST" / "raw" / name)
    edit(raw)
    return tmp_path / "data"


def _unknown_type(raw):
    data = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    data[2] = 0x42  # no IDX type
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))


def _one_label_short(raw):
    data = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    data[4:8] = (9999).to_bytes(4, "big")
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data[:-1]))


@pytest.mark.parametrize("edit, match", [
    (_unknown_type, "t10k-labels-idx1-ubyte is not an MNIST IDX file (header 00004201"),
    (_one_label_short, "9999 test labels for 10000 test images"),
])
def test_corrupt_mnist_files_are_named_before_anything_is_written(data_dir, tmp_path, capsys, edit, match):
    folder = _mnist_copy(data_dir, tmp_path, edit)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(folder), *TINY]) == 2
    err = capsys.readouterr().err
    assert match in err and str(folder) in err and "Traceback" not in err
    assert not out.exists()


def test_a_frey_face_file_of_the_wrong_shape_is_named(tmp_path):
    path = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(path, {"ff": np.zeros((28, 20, 5), dtype=np.uint8)})
    with pytest.raises(FileNotFoundError, match=r"frey_rawface.mat holds ff of shape \(28, 20, 5\)"):
        load_dataset("freyface", path)


# ---------------------------------------------------------------- 6. the estimator checks all the data


@pytest.fixture
def vae():
    return _model()


def test_nan_anywhere_in_x_is_an_error_naming_the_rows(vae):
    x = _data().x_test[:10].clone()
    x[9, 3] = float("nan")
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 row\(s\): \[0, 9\]"):
        log_marginal_likelihood(vae.model, vae.guide, x, num_samples=3)


def test_grey_pixels_under_a_bernoulli_are_refused_with_validate(vae):
    x = _data().x_test[:10] * 0.5
    with pytest.raises(ValueError, match=r"outside the support .* in rows \[0, 1, 2"):
        log_marginal_likelihood(vae.model, vae.guide, x, num_samples=3, validate=True)


def test_grey_pixels_under_a_bernoulli_are_refused_by_default_on_the_first_rows(vae):
    """Without validate=True the probe's rows are checked, as their log_prob would check them."""
    x = _data().x_test[:10].clone()
    x[2, 5] = 0.5
    with pytest.raises(ValueError, match=r"observed site 'x' holds values outside the support .* in rows \[2\]"):
        log_marginal_likelihood(vae.model, vae.guide, x, num_samples=3)
    with pyro.validation_enabled(False):  # the user's own choice: no checks
        assert log_marginal_likelihood(vae.model, vae.guide, x, num_samples=3).log_px.isfinite().all()


def test_a_distribution_that_does_not_validate_may_score_grey_pixels():
    """Pyro's own VAE example scores grey MNIST with ``Bernoulli(..., validate_args=False)``: left to it."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            probs = torch.sigmoid(z.sum(-1, keepdim=True)).expand(z.shape[:-1] + (4,))
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    x = torch.full((3, 4), 0.5)
    assert log_marginal_likelihood(model, guide, x, num_samples=3).log_px.shape == (3,)


class _NoSupport(dist.TorchDistribution):
    """A user's distribution that defines no support: log N(x; loc, 1/2) up to a constant, per pixel, summed."""

    arg_constraints: dict = {}

    def __init__(self, loc):
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:])

    def log_prob(self, x):
        return -((x - self.loc) ** 2).sum(-1)


class _DependentSupport(_NoSupport):
    support = torch.distributions.constraints.dependent


@pytest.mark.parametrize("likelihood", [_NoSupport, _DependentSupport])
@pytest.mark.parametrize("validate", [False, True])
def test_observed_sites_without_a_decidable_support_are_not_checked(likelihood, validate):
    """As torch's own validation does, a distribution without a support (or a dependent one) is scored unchecked."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", likelihood(z.sum(-1, keepdim=True).expand(z.shape[:-1] + (3,))), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that the first has no support to validate against
        result = log_marginal_likelihood(model, guide, torch.zeros(4, 3), num_samples=5, validate=validate)
    assert result.log_px.isfinite().all()


def test_shape_messages_report_the_callers_shape(vae):
    x = _data().x_test[:10].reshape(10, 4, 4)
    with pytest.raises(ValueError, match=r"x_dim=16\.(.|\n)*shapes \[\(10, 4, 4\)\]") as error:
        log_marginal_likelihood(vae.model, vae.guide, x, num_samples=3)
    assert "x_dim=4." not in str(error.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 2.5}, "num_samples must be at least 1 and an integer, got 2.5"),
    ({"num_samples": 0}, "num_samples must be at least 1"),
    ({"num_samples": 3, "max_memory_bytes": 0}, "max_memory_bytes must be a positive"),
    ({"num_samples": 3, "rows": 0}, "0 rows"),
])
def test_nonsense_estimator_arguments_are_value_errors(vae, kwargs, match):
    x = _data().x_test[: kwargs.pop("rows", 10)]
    with pytest.raises(ValueError, match=match):
        log_marginal_likelihood(vae.model, vae.guide, x, **kwargs)


# ---------------------------------------------------------------- 7. fit checks data held as tensors


@pytest.mark.parametrize("data, test_data, match", [
    (torch.zeros(0, 16), None, r"the training data has no datapoints \(tensors of shapes \[\(0, 16\)\]\)"),
    ((torch.zeros(8, 16), torch.zeros(7)), None, r"must share their leading size .*\[\(8, 16\), \(7,\)\]"),
    (torch.zeros(8, 16).index_fill(0, torch.tensor([3]), float("nan")), None,
     r"the training data holds NaN or infinite values in 1 row\(s\): \[3\]\."),
    ({"x": torch.zeros(8, 16).index_fill(0, torch.arange(12) % 8, float("inf"))}, None,
     r"the training data \('x'\) holds NaN or infinite values in 8 row\(s\)"),
    (torch.zeros(8, 16), torch.full((4, 16), float("nan")), r"the test data holds NaN or infinite values in 4 row"),
])
def test_bad_tensor_data_is_named_before_anything_is_written(tmp_path, data, test_data, match):
    """Before: NaN data ran a step and stopped as a diverged loss ("lower the learning rate"); no rows, StopIteration."""
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        fit(model, data, TrainConfig(epochs=1, batch_size=4, device="cpu"), tmp_path / "run", test_data=test_data)
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_an_empty_dataset_or_loader_is_one_clear_error():
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 16))
    with pytest.raises(ValueError, match="the training data has no datapoints \\(an empty TensorDataset\\)"):
        fit(_model(), empty, TrainConfig(epochs=1, device="cpu"))
    with pytest.raises(ValueError, match="yields no minibatch"):  # a loader that drops its only, incomplete batch
        fit(_model(), torch.utils.data.DataLoader(torch.zeros(3, 16), batch_size=4, drop_last=True),
            TrainConfig(epochs=1, device="cpu"))
