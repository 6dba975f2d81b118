"""Your model, your data: fit's written contract, any data, any Pyro objective, and the estimator at every edge.

Each test is a case a user met: a pair without ``name`` or ``config``, data as
a Dataset, a DataLoader, tensors or dicts, Pyro's own objectives, a guide that
misses a site, a plate-indexed guide, a subsampled plate, ``poutine.scale``,
and Pyro's own VAE example pair.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pplvae import CheckpointError, TrainConfig, fit, load_run, log_marginal_likelihood
from pplvae.models.protocol import ImageModel, ModelGuidePair

X_DIM, Z_DIM = 12, 2


class PlainVAE(PyroModule):
    """A user's VAE: no name, no config, no helper methods; ``y`` is an optional unused label."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(Z_DIM, 16), nn.Tanh(), nn.Linear(16, X_DIM))
        self.encoder = nn.Sequential(nn.Linear(X_DIM, 16), nn.Tanh(), nn.Linear(16, 2 * Z_DIM))

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def binary_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, X_DIM), 0.3), generator=g)


CONFIG = TrainConfig(epochs=2, batch_size=32, device="cpu")


def test_fit_needs_only_model_guide_and_parameters():
    """Before: AttributeError: 'VAE' object has no attribute 'name', then asdict() of a non-dataclass."""
    vae = PlainVAE()
    assert isinstance(vae, ModelGuidePair) and not isinstance(vae, ImageModel)
    metrics = fit(vae, binary_data(), CONFIG, test_data=binary_data(32, seed=1))
    assert list(metrics.epoch) == [1, 2]
    assert metrics.test_elbo.notna().all() and (metrics.test_elbo < 0).all()


def test_fit_writes_a_run_folder_for_a_users_model(tmp_path):
    fit(PlainVAE(), binary_data(), CONFIG, run_dir=tmp_path / "run")
    import json

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["name"] == "PlainVAE" and saved["data"]["train_size"] == 96
    # the run loads into the user's own model; without it, the message says how
    with pytest.raises(ValueError, match="'PlainVAE' model, not one of pplvae's.*model=") as error:
        load_run(tmp_path / "run", device="cpu")
    assert "\n" not in str(error.value)
    run = load_run(tmp_path / "run", device="cpu", model=PlainVAE())
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    for name, value in run.model.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)
    with pytest.raises(CheckpointError, match="does not hold the weights of the model given"):
        load_run(tmp_path / "run", device="cpu", model=nn.Linear(2, 3))


class DictDataset(Dataset):
    """Items are dicts of keyword arguments of the programs."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": torch.tensor(i % 3)}


@pytest.mark.parametrize(
    "make_data",
    [
        lambda x: x,  # a tensor: model(x)
        lambda x: (x, torch.arange(len(x)) % 3),  # a tuple of tensors: model(x, y)
        lambda x: {"x": x},  # a dict of tensors: model(x=x)
        lambda x: TensorDataset(x),  # a Dataset of 1-tuples
        lambda x: DictDataset(x),  # a Dataset of dicts
        lambda x: DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=16, shuffle=True),
    ],
    ids=["tensor", "tuple", "dict", "tensor-dataset", "dict-dataset", "dataloader"],
)
def test_fit_takes_any_data(make_data):
    """Before: fit took only ImageData (flattened images in [0, 1], held whole)."""
    pyro.set_rng_seed(0)
    vae = PlainVAE()
    before = [p.detach().clone() for p in vae.parameters()]
    metrics = fit(vae, make_data(binary_data()), CONFIG, test_data=make_data(binary_data(32, seed=1)))
    assert len(metrics) == 2 and all(math.isfinite(v) for v in metrics.train_elbo)
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))  # it trained


def test_images_keep_their_shape():
    """(N, 1, 4, 3) images through a model that flattens them itself."""

    class ImageVAE(PlainVAE):
        def model(self, x):
            super().model(x.flatten(1))

        def guide(self, x):
            super().guide(x.flatten(1))

    metrics = fit(ImageVAE(), binary_data().reshape(-1, 1, 4, 3), CONFIG)
    assert len(metrics) == 2


class Mixture(PyroModule):
    """A discrete latent enumerated in the model, not sampled by the guide: needs TraceEnum_ELBO."""

    def __init__(self):
        super().__init__()
        self.locs = PyroParam(torch.tensor([-2.0, 2.0]))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(self.locs[c], 1.0), obs=x)

    def guide(self, x):
        pass


@pytest.mark.parametrize("objective", [TraceEnum_ELBO(max_plate_nesting=1)], ids=["TraceEnum_ELBO"])
def test_fit_with_an_enumerating_objective_reports_metrics(objective):
    """Before: Trainer trained, then the epoch metrics crashed ('TraceEnum_ELBO' object has no attribute 'loss_terms')."""
    x = torch.cat([torch.randn(50) - 2, torch.randn(50) + 2])
    mixture = Mixture()
    metrics = fit(mixture, x, TrainConfig(epochs=30, batch_size=100, learning_rate=0.05, device="cpu"),
                  test_data=x, objective=objective)
    assert metrics.test_elbo.notna().all() and metrics.test_elbo.iloc[-1] > metrics.test_elbo.iloc[0]
    # the exact log p(x) of the mixture, per datapoint, at the fitted locations
    locs = mixture.locs.detach()
    exact = torch.logsumexp(dist.Normal(locs, 1.0).log_prob(x.unsqueeze(-1)) + math.log(0.5), -1).mean()
    assert metrics.test_elbo.iloc[-1] == pytest.approx(exact.item(), abs=1e-4)  # enumeration: the ELBO is exact


@pytest.mark.parametrize(
    "objective",
    [Trace_ELBO(), TraceGraph_ELBO(), RenyiELBO(alpha=0.5, num_particles=2), TraceMeanField_ELBO()],
    ids=["Trace_ELBO", "TraceGraph_ELBO", "RenyiELBO", "TraceMeanField_ELBO"],
)
def test_fit_with_any_pyro_objective(objective):
    pyro.set_rng_seed(0)
    metrics = fit(PlainVAE(), binary_data(), CONFIG, test_data=binary_data(32, seed=1), objective=objective)
    assert metrics.test_elbo.notna().all() and all(math.isfinite(v) for v in metrics.test_elbo)


class MissingSite(PlainVAE):
    def model(self, x):
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
        super().model(x + 0 * u)


class ExtraSite(PlainVAE):
    def guide(self, x):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        super().guide(x)


@pytest.mark.parametrize("pair, message", [(MissingSite, r"does not sample the model's latent site\(s\) \['u'\]"),
                                           (ExtraSite, r"samples site\(s\) \['w'\] that the model does not have")])
def test_mismatched_sites_are_an_error_before_the_first_step(pair, message, tmp_path):
    """Before: a whole epoch of training, then KeyError: 'u' in objectives/terms.py."""
    vae = pair()
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(ValueError, match=message):
        fit(vae, binary_data(), CONFIG, run_dir=tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_pyros_vae_example_pair_trains_unchanged():
    """The pair of Pyro's examples/vae/vae.py: an nn.Module whose programs call pyro.module."""

    class PyroExampleVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(X_DIM, 16), nn.Softplus(), nn.Linear(16, 2 * Z_DIM))
            self.decoder = nn.Sequential(nn.Linear(Z_DIM, 16), nn.Softplus(), nn.Linear(16, X_DIM), nn.Sigmoid())

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("latent", dist.Normal(x.new_zeros(Z_DIM), x.new_ones(Z_DIM)).to_event(1))
                pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, log_scale = self.encoder(x).chunk(2, -1)
                pyro.sample("latent", dist.Normal(loc, log_scale.exp()).to_event(1))

    pyro.set_rng_seed(0)
    vae = PyroExampleVAE()
    before = [p.detach().clone() for p in vae.parameters()]
    metrics = fit(vae, binary_data(), TrainConfig(epochs=3, batch_size=32, device="cpu"), test_data=binary_data())
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert metrics.test_elbo.iloc[-1] > metrics.test_elbo.iloc[0]


# The estimator at every edge -------------------------------------------------------------


def linear_gaussian(n=10, seed=0):
    """z ~ N(0, 1), x | z ~ N(z, 1): exact log p(x) = log N(x; 0, 2); the posterior is N(x/2, 1/2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 2**0.5
    exact = dist.Normal(torch.zeros((), dtype=torch.float64), 2**0.5).log_prob(x)
    return x, exact


def model_1d(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("budget", [1, 64, 10**9], ids=["one-datapoint-chunks", "small", "one-chunk"])
def test_plate_indexed_guide_is_exact_at_every_budget(budget):
    """Before: per-datapoint guide parameters read by the plate's indices restarted at 0 in every chunk:
    up to 178 nats off, depending on the memory budget. Here the guide is the exact posterior, stored per
    datapoint, so every weight equals p(x_i) and any K gives the exact value."""
    x, exact = linear_gaussian()
    locs, scale = x / 2, torch.full_like(x, 0.5**0.5)

    def guide(x):
        with pyro.plate("data", x.shape[0]) as idx:
            pyro.sample("z", dist.Normal(locs[idx], scale[idx]))

    result = log_marginal_likelihood(model_1d, guide, x, num_samples=7, max_memory_bytes=budget)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-10)
    if budget == 1:
        assert result.chunk_shape[1] == 1  # one datapoint per chunk: the case that used to fail


def test_plate_indexed_guide_is_exact_when_compiled():
    x, exact = linear_gaussian(5)
    locs, scale = x / 2, torch.full_like(x, 0.5**0.5)

    def guide(x):
        with pyro.plate("data", x.shape[0]) as idx:
            pyro.sample("z", dist.Normal(locs[idx], scale[idx]))

    result = log_marginal_likelihood(model_1d, guide, x, num_samples=3, max_memory_bytes=1, compile=True)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("subsample_size", [2, 32])
def test_a_subsampled_data_plate_gets_a_clear_message(subsample_size):
    """Before: subsample_size=32 got Pyro's 'did you use different subsample_size in the model and guide?'."""
    x, _ = linear_gaussian(40)

    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(x[idx] / 2, 0.5**0.5))

    with pytest.raises(ValueError, match=f"plate 'data' is subsampled \\(subsample_size={subsample_size} of"):
        log_marginal_likelihood(model, guide, x, num_samples=5)


def test_poutine_scale_is_removed_from_log_px():
    """Before: poutine.scale in the model silently scaled the returned 'log p(x)'."""
    x, exact = linear_gaussian()

    def scaled_model(x):
        with poutine.scale(scale=0.25):
            model_1d(x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    result = log_marginal_likelihood(scaled_model, guide, x, num_samples=4)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-10)


def test_readme_library_section_runs_top_to_bottom(data_dir, tmp_path, monkeypatch):
    """The README's Library code blocks, in order, as a new user runs them: MNIST, Frey Face as a
    TensorDataset, then log p(x) of the MNIST VAE; smaller (1,000 images, 1 and 2 epochs, K = 50)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    library = readme[readme.index("## Library"):readme.index("## Benchmarks")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", library, re.S))
    smaller = [('load_dataset("mnist")', 'load_dataset("mnist", train_size=1000, test_size=100)'),
               ("TrainConfig(epochs=10)", "TrainConfig(epochs=1)"), ("epochs=100", "epochs=2"),
               ("../shared/data", str(data_dir)), ("num_samples=5000", "num_samples=50")]
    for old, new in smaller:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.setenv("PPLVAE_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)  # run_dir="runs/mine" lands here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "mine" / "checkpoint.pt").exists() and len(namespace["metrics"]) == 1
    face = namespace["face_metrics"]
    assert list(face.epoch) == [1, 2] and face.test_elbo.notna().all()
    assert face.test_elbo.iloc[-1] > face.test_elbo.iloc[0]  # it learns
    result = namespace["result"]
    assert result.log_px.shape == (100,) and (result.bounds[1] <= result.log_px).all()
