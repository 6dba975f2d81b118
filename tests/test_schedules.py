"""Training settings of issue 18: learning-rate schedules, Adam's eps and betas, clipping, the data-based init.

Each schedule's rate per epoch is checked against its closed form; a run
stopped and resumed under a schedule must equal an uninterrupted one; the
settings must survive config.json; Burda's protocol runs end to end.
"""

import json
import math

import pandas as pd
import pyro
import pytest
import torch

from pplvae import VAE, HVAE, HVAEConfig, TrainConfig, Trainer, VAEConfig, fit, load_dataset
from pplvae.burda_protocol import run_burda_protocol
from pplvae.cli import main
from pplvae.networks import BernoulliDecoder, GaussianEncoder
from pplvae.schedules import burda_epochs, make_scheduler

SMALL = dict(z_dim=5, hidden_dims=(32,))


def _model(seed=0):
    pyro.set_rng_seed(seed)
    return VAE(VAEConfig(x_dim=784, **SMALL))


@pytest.fixture(scope="module")
def tiny_mnist(data_dir):
    return load_dataset("mnist", data_dir, train_size=100, test_size=50)


def _burda_rate(epoch, lr=1e-3):
    """Burda et al.: stage i (3^i epochs, from epoch (3^i - 1) / 2 on) trains at lr * 10^(-i/7)."""
    stage = max(i for i in range(8) if (3**i - 1) // 2 <= epoch)
    return lr * 10 ** (-stage / 7)


def test_burda_schedule_per_epoch_in_fit_is_the_formula(tiny_mnist):
    config = TrainConfig(epochs=burda_epochs(3), batch_size=50, device="cpu", lr_schedule="burda")
    metrics = fit(_model(), tiny_mnist, config)
    assert len(metrics) == 13
    for epoch, lr in zip(metrics["epoch"], metrics["lr"]):
        assert lr == pytest.approx(_burda_rate(epoch - 1), rel=1e-12), epoch
    assert sorted(set(metrics["lr"].round(12)), reverse=True) == [round(1e-3 * 10 ** (-i / 7), 12) for i in range(3)]


@pytest.mark.parametrize("name, rate", [
    ("burda", lambda e: _burda_rate(e)),
    ("step", lambda e: 1e-3 * 0.5 ** (e // 3)),
    ("cosine", lambda e: 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * e / 20)) / 2),
    ("constant", lambda e: 1e-3),
])
def test_schedules_follow_their_closed_forms(name, rate):
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = make_scheduler(optimizer, name, epochs=20, step_size=3, gamma=0.5, lr_min=1e-5)
    for epoch in range(1300 if name == "burda" else 21):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(rate(epoch), rel=1e-9), epoch
        optimizer.step()
        scheduler.step()


def test_burda_epochs_of_the_full_protocol():
    assert burda_epochs(8) == 3280 and burda_epochs(5) == 121


def test_resume_under_a_schedule_equals_an_uninterrupted_run(tiny_mnist, tmp_path):
    config = TrainConfig(epochs=5, batch_size=50, device="cpu", lr_schedule="burda", clip_norm=50.0)
    straight = _model()
    expected = fit(straight, tiny_mnist, config, tmp_path / "straight")

    first = TrainConfig(**{**config.__dict__, "epochs": 2})
    fit(_model(), tiny_mnist, first, tmp_path / "split")
    resumed = _model(seed=7)
    pyro.set_rng_seed(999)
    got = fit(resumed, tiny_mnist, config, tmp_path / "split", resume=True)

    pd.testing.assert_frame_equal(got.drop(columns="seconds"), expected.drop(columns="seconds"))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_settings_round_trip_through_config_json(tiny_mnist, tmp_path):
    config = TrainConfig(epochs=1, batch_size=50, device="cpu", adam_eps=1e-6, adam_betas=(0.5, 0.9),
                         lr_schedule="step", lr_step_size=2, lr_gamma=0.3, clip_norm=10.0)
    fit(_model(), tiny_mnist, config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["train"]
    assert TrainConfig.from_dict(saved) == config
    legacy = {k: v for k, v in saved.items() if k != "adam_eps"}  # a run saved before the field existed
    assert TrainConfig.from_dict(legacy).adam_eps == 1e-8


def test_adam_gets_eps_and_betas():
    trainer = Trainer(_model(), TrainConfig(device="cpu", adam_eps=1e-6, adam_betas=(0.8, 0.99)))
    assert trainer.optimizer.defaults["eps"] == 1e-6 and trainer.optimizer.defaults["betas"] == (0.8, 0.99)
    assert TrainConfig().adam_eps == 1e-4  # Burda et al.'s default


def test_gradients_are_clipped_before_the_step(tiny_mnist):
    trainer = Trainer(_model(), TrainConfig(device="cpu", clip_norm=0.5))
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record)
    x = torch.bernoulli(tiny_mnist.x_train[:50])
    for _ in range(3):
        trainer.step(x)
    assert len(norms) == 3 and max(norms) <= 0.5 + 1e-5
    # unclipped, the first steps' gradients of an untrained VAE are far larger
    free = Trainer(_model(), TrainConfig(device="cpu"))
    free.optimizer.register_step_pre_hook(record)
    free.step(x)
    assert norms[-1] > 5


@pytest.mark.parametrize("bad", [dict(adam_eps=0), dict(adam_betas=(0.9, 1.0)), dict(lr_schedule="linear"),
                                 dict(clip_norm=-1.0), dict(lr_gamma=0.0), dict(lr_step_size=0)])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_bernoulli_decoder_starts_at_the_mean_pixel():
    decoder = BernoulliDecoder(z_dim=3, x_dim=4, hidden_dims=(8,))
    with torch.no_grad():
        decoder.logits.weight.zero_()  # isolate the bias: the mean then ignores z
    decoder.init_output_bias(torch.tensor([0.0, 0.25, 0.5, 1.0]))
    expected = torch.tensor([1e-3, 0.25, 0.5, 1 - 1e-3])
    torch.testing.assert_close(decoder.mean(torch.randn(2, 3)), expected.expand(2, 4))
    with pytest.raises(ValueError):
        decoder.init_output_bias(torch.zeros(5))


class _Recording(VAE):
    calls: list

    def init_from_data(self, x_mean):
        self.calls.append(x_mean.clone())


def test_fit_initializes_from_the_data_on_a_fresh_run_only(tiny_mnist, tmp_path):
    pyro.set_rng_seed(0)
    model = _Recording(VAEConfig(x_dim=784, **SMALL))
    model.calls = []
    fit(model, tiny_mnist, TrainConfig(epochs=1, batch_size=50, device="cpu"), tmp_path)
    assert len(model.calls) == 1
    torch.testing.assert_close(model.calls[0], tiny_mnist.x_train.mean(0))
    fit(model, tiny_mnist, TrainConfig(epochs=2, batch_size=50, device="cpu"), tmp_path, resume=True)
    assert len(model.calls) == 1  # not on resume: the checkpoint holds the trained bias


@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_gaussian_encoder_scale_starts_where_asked(scale):
    encoder = GaussianEncoder(3, 2, hidden_dims=(), scale=scale, scale_init=0.1, skip=True)
    z_loc, z_scale = encoder(torch.zeros(4, 3))
    torch.testing.assert_close(z_scale, torch.full((4, 2), 0.1))
    assert z_loc.shape == (4, 2)
    with pytest.raises(ValueError):
        GaussianEncoder(3, 2, (), scale="relu")


def test_hvae_top_layer_options_give_a_valid_elbo():
    hvae = HVAE(HVAEConfig(x_dim=6, z_dim=2, z1_dim=3, hidden_dims=(4,), top_hidden_dims=(4,),
                           top_scale="softplus", top_scale_init=0.5, top_skip=True))
    loss = pyro.infer.Trace_ELBO().loss(hvae.model, hvae.guide, torch.ones(5, 6))
    assert math.isfinite(loss)


def test_cli_settings_and_reproduce_burda(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    tiny = ["--train-size", "100", "--test-size", "50", "--no-progress", "--device", "cpu", "--data-dir", str(data_dir)]
    assert main(["train", "--epochs", "2", "--out", str(run), "--z-dim", "2", "--hidden-dims", "16",
                 "--batch-size", "50", "--lr-schedule", "burda", "--adam-eps", "1e-5", "--adam-betas", "0.8", "0.99",
                 "--clip-norm", "20", *tiny]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["lr_schedule"], saved["adam_eps"], saved["adam_betas"], saved["clip_norm"]) == (
        "burda", 1e-5, [0.8, 0.99], 20.0)
    assert main(["train", "--epochs", "4", "--out", str(run), "--resume", "--no-progress",
                 "--data-dir", str(data_dir)]) == 0
    lr = pd.read_csv(run / "metrics.csv")["lr"].tolist()
    assert lr == pytest.approx([_burda_rate(e) for e in range(4)])

    out = tmp_path / "burda"
    assert main(["reproduce", "burda", "--stages", "1", "--num-samples", "10", "--out", str(out), *tiny]) == 0
    table = pd.read_csv(out / "burda.csv")
    assert table.loc[0, "paper_nll"] == 86.76 and table.loc[0, "epochs"] == 1 and table.loc[0, "K"] == 10
    assert table.loc[0, "test_images"] == 50 and table.loc[0, "active_units"].startswith("z: ")
    assert "Burda et al. Table 1: 86.76" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_burda_protocol_refuses_a_bad_estimate_size_before_training(tmp_path, data_dir, capsys, bad):
    """K is used only after thousands of epochs: a bad one is refused before the first, and nothing is written."""
    data = load_dataset("mnist", data_dir, train_size=100, test_size=50)
    with pytest.raises(ValueError, match="num_samples"):
        run_burda_protocol(data, tmp_path / "lib", stages=1, num_samples=bad, device="cpu")
    assert not (tmp_path / "lib").exists()
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as refused:  # argparse's own one-line usage error
        main(["reproduce", "burda", "--num-samples", str(bad), "--out", str(out), "--data-dir", str(data_dir)])
    assert refused.value.code == 2
    assert "--num-samples" in capsys.readouterr().err and not out.exists()


def test_a_new_learning_rate_on_resume_scales_the_schedule():
    trainer = Trainer(_model(), TrainConfig(device="cpu", lr_schedule="burda", epochs=20))
    for _ in range(5):  # five epochs: stage 2's rate
        trainer.optimizer.step()
        trainer.scheduler.step()
    state = trainer.state_dict()
    same = Trainer(_model(), TrainConfig(device="cpu", lr_schedule="burda", epochs=20))
    same.load_state_dict(state)
    same.rebase_learning_rate(1e-3)
    assert same.optimizer.param_groups[0]["lr"] == trainer.optimizer.param_groups[0]["lr"]  # bit for bit
    doubled = Trainer(_model(), TrainConfig(device="cpu", lr_schedule="burda", epochs=20, learning_rate=2e-3))
    doubled.load_state_dict(state)
    doubled.rebase_learning_rate(2e-3)
    assert doubled.optimizer.param_groups[0]["lr"] == pytest.approx(2 * _burda_rate(5))
    doubled.optimizer.step()
    doubled.scheduler.step()
    assert doubled.optimizer.param_groups[0]["lr"] == pytest.approx(2 * _burda_rate(6))
