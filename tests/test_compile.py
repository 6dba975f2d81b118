"""The compiled loss (TrainConfig(compile=True)) gives the eager loss's values, gradients and training path."""

from __future__ import annotations

import pyro
import pytest
import torch

from pplvae import CVAE, VAE, CVAEConfig, FastTrace_ELBO, TrainConfig, Trainer, VAEConfig
from pplvae.training import CompiledLoss, NegativeELBO


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


@pytest.fixture
def compiles(monkeypatch):
    """The calls of Inductor's compiler from here on (a list growing by one per graph compiled), with the
    estimator's process-wide cache of compiled chunks emptied first. The one-operator graphs that
    ``faster_in_aten`` compiles to time an operator are not counted."""
    from pplvae import compiled_chunks

    compiled_chunks.clear_cache()
    calls = []
    compile = torch._inductor.compile

    def counted(graph, *args, **kwargs):
        if sum(node.op == "call_function" for node in graph.graph.nodes) > 1:
            calls.append(1)
        return compile(graph, *args, **kwargs)

    monkeypatch.setattr(torch._inductor, "compile", counted)
    return calls


def test_compiled_loss_equals_the_eager_loss_for_every_batch_size(monkeypatch, compiles):
    """Each batch shape is compiled when first seen and reused after; past MAX_SHAPES shapes the eager loss
    runs. Same seed, same draws, same numbers, compiled or not."""
    monkeypatch.setattr(CompiledLoss, "MAX_SHAPES", 2)
    pyro.set_rng_seed(0)
    cvae = CVAE(CVAEConfig(x_dim=30, z_dim=3, hidden_dims=(16,)))
    eager = NegativeELBO(cvae, FastTrace_ELBO())
    compiled = CompiledLoss(eager)
    for n, compiles_after in ((16, 1), (5, 2), (16, 2), (7, 2)):
        x = torch.bernoulli(torch.full((n, 30), 0.3))
        args = cvae.batch_args(x, torch.arange(n) % 10)
        with pyro.validation_enabled(False):
            pyro.set_rng_seed(n)
            expected = eager(*args)
            expected.backward()
            expected_grads = grads(cvae)
            cvae.zero_grad()
            pyro.set_rng_seed(n)
            got = compiled(*args)
            got.backward()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        for g, e in zip(grads(cvae), expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
        cvae.zero_grad()
        assert len(compiles) == compiles_after
    assert compiled.compile_seconds > 0


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checked on the device machine)")


@pytest.mark.parametrize("objective", [{}, {"objective": "iwae", "num_particles": 5}], ids=["elbo", "iwae"])
@pytest.mark.parametrize("device, mode", [("cpu", "default"), pytest.param("cuda", "default", marks=CUDA),
                                          pytest.param("cuda", "reduce-overhead", marks=CUDA)])
def test_compiled_training_follows_the_eager_path(device, mode, objective):
    """Ten Adam steps from the same weights and seed end at the same parameters, within float tolerance
    (on a GPU also as CUDA graphs, ``compile_mode="reduce-overhead"``). IWAE's first call guesses the plate
    nesting by a run of model and guide; that run is not recorded, so no step draws more than the eager one."""
    x = torch.bernoulli(torch.full((40, 30), 0.3)).to(device)
    finals = []
    for compile in (False, True):
        pyro.set_rng_seed(1)
        vae = VAE(VAEConfig(x_dim=30, z_dim=3, hidden_dims=(16,)))
        config = TrainConfig(batch_size=8, device=device, compile=compile, compile_mode=mode if compile else "default",
                             **objective)
        trainer = Trainer(vae, config)
        pyro.set_rng_seed(2)
        with pyro.validation_enabled(False):
            losses = [trainer.step(batch).item() for batch in x.split(8) * 2]
        finals.append((losses, [p.detach().clone() for p in vae.parameters()]))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = finals
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(compiled_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_refuses_kl_warmup_and_unknown_modes():
    with pytest.raises(ValueError, match="kl_warmup"):
        TrainConfig(compile=True, kl_warmup=2)
    for options in ({"beta": 4.0}, {"num_particles": 3}, {"objective": "elbo-analytic"}, {"objective": "mmd"}):
        with pytest.raises(ValueError, match="compile=True records objective 'elbo' .* or 'iwae'"):
            TrainConfig(compile=True, **options)
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile=True, compile_mode="max-speed")
    with pytest.raises(ValueError, match="mode of compile=True"):
        TrainConfig(compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="CUDA graphs, which need a GPU; on cpu"):
        TrainConfig(device="cpu", compile=True, compile_mode="reduce-overhead")


def test_compile_refuses_an_objective_it_cannot_record():
    """Pyro's Trace_ELBO checks tensor values in Python (a graph cannot hold that): a one-line ValueError."""
    vae = VAE(VAEConfig(x_dim=30, z_dim=3, hidden_dims=(16,)))
    trainer = Trainer(vae, TrainConfig(batch_size=8, device="cpu", compile=True), objective=pyro.infer.Trace_ELBO())
    with pytest.raises(ValueError, match="could not record the loss as one operator graph") as error:
        trainer.step(torch.bernoulli(torch.full((8, 30), 0.3)))
    assert "\n" not in str(error.value)


def test_compiled_estimator_equals_the_uncompiled_one():
    """log_marginal_likelihood(compile=True): the same draws, the same per-datapoint nats to float rounding."""
    import pplvae

    pyro.set_rng_seed(0)
    cvae = CVAE(CVAEConfig(x_dim=30, z_dim=3, hidden_dims=(16,)))
    x = torch.bernoulli(torch.full((7, 30), 0.3))
    args = cvae.batch_args(x, torch.arange(7) % 10)
    results = []
    for compile in (False, True):
        pyro.set_rng_seed(1)  # chunks of 2 datapoints: a full chunk shape and a shorter last one
        results.append(pplvae.log_marginal_likelihood(cvae.model, cvae.guide, *args, num_samples=300,
                                                      max_memory_bytes=300 * 2 * 1200, compile=compile))
    plain, compiled = results
    assert plain.chunk_shape == compiled.chunk_shape and plain.chunk_shape[1] < 7
    torch.testing.assert_close(compiled.log_px, plain.log_px, rtol=0, atol=1e-4)
    torch.testing.assert_close(compiled.bounds[1], plain.bounds[1], rtol=0, atol=1e-4)


def test_the_compiled_estimator_follows_weights_and_networks_changed_between_calls(compiles):
    """Compiled chunks are kept across calls: reused while the program is the same (weights trained in
    place are read at run time), compiled again when a network is swapped; every result equals the
    uncompiled estimate with the same draws."""
    import pplvae

    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(x_dim=12, z_dim=2, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((5, 12), 0.4))

    def both():
        out = []
        for compiled in (False, True):
            pyro.set_rng_seed(3)
            out.append(pplvae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=40,
                                                      max_memory_bytes=40 * 5 * 1000, compile=compiled).log_px)
        torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-4)
        return out[1]

    first = both()
    assert len(compiles) == 1  # one chunk shape: one compile
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))  # trained in place: the same program
    second = both()
    assert len(compiles) == 1 and not torch.allclose(first, second)
    vae.decoder = VAE(VAEConfig(x_dim=12, z_dim=2, hidden_dims=(8,))).decoder  # a new network: a new program
    both()
    assert len(compiles) == 2


def test_a_new_torch_thread_count_gets_graphs_of_its_own(compiles):
    """Inductor writes torch's thread count into a CPU graph's loops (compiled on one thread, a graph runs on
    one): the training loss and the estimator's chunks are compiled again for a new count, reused for one seen
    before, with the same numbers."""
    import pplvae

    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(x_dim=12, z_dim=2, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    loss = CompiledLoss(NegativeELBO(vae, FastTrace_ELBO()))
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    try:
        for threads, compiles_after in ((before, 1), (other, 2), (before, 2)):
            torch.set_num_threads(threads)
            pyro.set_rng_seed(1)
            with pyro.validation_enabled(False):
                got = loss(x)
            pyro.set_rng_seed(1)
            torch.testing.assert_close(got, NegativeELBO(vae, FastTrace_ELBO())(x), rtol=1e-5, atol=1e-4)
            assert len(compiles) == compiles_after
        compiles.clear()
        for threads, compiles_after in ((before, 1), (other, 2), (before, 2)):
            torch.set_num_threads(threads)
            out = []
            for compiled in (False, True):
                pyro.set_rng_seed(3)
                out.append(pplvae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=40,
                                                          max_memory_bytes=40 * 5 * 1000, compile=compiled).log_px)
            assert len(compiles) == compiles_after
            torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-4)
    finally:
        torch.set_num_threads(before)


def _linear_gaussian():
    """z ~ N(0, 1), x | z ~ N(z, 1), and the exact posterior N(x/2, 1/2) as guide: log p(x) = log N(x; 0, 2)."""
    torch.manual_seed(0)
    x = torch.randn(6, dtype=torch.float64) * 2
    exact = -0.5 * x**2 / 2 - 0.5 * torch.log(torch.tensor(2 * torch.pi * 2.0, dtype=torch.float64))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)

    def guide(x):  # every log-weight is log p(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(x / 2, 0.5**0.5))

    return model, guide, x, exact


def test_the_compiled_estimator_is_exact_with_plate_expanded_normal_parameters():
    """Before: the fast Normal density took its parameters back to one row with as_strided, which
    the compiled graph read relative to the storage: 25 nats off on this model."""
    import pplvae

    model, guide, x, exact = _linear_gaussian()
    for budget in (1, 10**9):  # one datapoint per chunk, and all six in one
        result = pplvae.log_marginal_likelihood(model, guide, x, num_samples=50, compile=True,
                                                max_memory_bytes=budget)
        torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-9)


def test_the_compiled_estimator_times_its_chunk_size_when_no_budget_is_given():
    """Without max_memory_bytes, compile=True measures a few chunk shapes and keeps one: still exact."""
    import pplvae
    from pplvae import compiled_chunks
    from pplvae.marginal import default_memory_budget

    compiled_chunks.clear_cache()
    model, guide, x, exact = _linear_gaussian()
    result = pplvae.log_marginal_likelihood(model, guide, x, num_samples=2000, compile=True)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-9)
    # on a CPU the kept shape is that of a quarter, a sixteenth or a 64th of the default budget
    budget = default_memory_budget("cpu")
    candidates = {pplvae.log_marginal_likelihood(model, guide, x, num_samples=2000,
                                                 max_memory_bytes=budget / 4**i).chunk_shape for i in (1, 2, 3)}
    assert result.chunk_shape in candidates
    k, n = result.chunk_shape
    assert 1 <= k <= 2000 and 1 <= n <= 6
    again = pplvae.log_marginal_likelihood(model, guide, x, num_samples=2000, compile=True)
    assert again.chunk_shape == result.chunk_shape  # the choice is kept for the program


def test_transcendentals_between_matrix_products_run_as_aten_kernels_with_the_same_values():
    """A tanh between two Linear layers has nothing to fuse with: it becomes an ATen call in the graph,
    while the last tanh, which Inductor fuses with the add after it, stays; the compiled values agree."""
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from pplvae.inductor_passes import UnfusableTranscendentals, keep_unfusable_transcendentals

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh())
    x = torch.randn(4, 5)
    with torch.no_grad():
        graph = make_fx(lambda x: mlp(x) + 1.0)(x)
        assert keep_unfusable_transcendentals(graph.graph) == 1
        graph.recompile()
        targets = [node.target for node in graph.graph.nodes]
        assert targets.count(torch.ops.pplvae.aten_pointwise.default) == 1
        assert targets.count(torch.ops.aten.tanh.default) == 1
        torch.testing.assert_close(torch.compile(graph)(x), mlp(x) + 1.0)
    # as torch.compile's post-grad pass, under autograd: gradients are unchanged
    compiled = torch.compile(lambda x: mlp(x).sum(), options={"post_grad_custom_pre_pass": UnfusableTranscendentals()})
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(compiled(x), x)
    (expected,) = torch.autograd.grad(mlp(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_only_the_transcendentals_timed_faster_by_aten_become_aten_calls(monkeypatch):
    """faster_in_aten times each unfusable (operator, shape, dtype) once per process and thread count and
    names those where ATen's kernel won; the pass rewrites just the nodes named, and the compiled values
    agree with the eager ones whichever way the timing went."""
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from pplvae.inductor_passes import UnfusableTranscendentals, faster_in_aten, keep_unfusable_transcendentals

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    x = torch.randn(300, 5)
    tanh = ("tanh", (300, 64), "float32")  # both hidden layers' tanh: one timing
    with torch.no_grad():
        rng = torch.get_rng_state()
        faster = faster_in_aten(make_fx(mlp)(x).graph)
        assert faster <= {tanh}
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's draws are untouched
        calls = []
        compile = torch._inductor.compile
        monkeypatch.setattr(torch._inductor, "compile", lambda *a, **kw: calls.append(1) or compile(*a, **kw))
        assert faster_in_aten(make_fx(mlp)(x).graph) == faster and not calls  # kept for the process
        assert keep_unfusable_transcendentals(make_fx(mlp)(x).graph, only=()) == 0
        assert keep_unfusable_transcendentals(make_fx(mlp)(x).graph, only=[tanh]) == 2
        assert keep_unfusable_transcendentals(make_fx(mlp)(x).graph, only=[("tanh", (7, 64), "float32")]) == 0
        compiled = torch.compile(mlp, options={"post_grad_custom_pre_pass": UnfusableTranscendentals(faster)})
        torch.testing.assert_close(compiled(x), mlp(x))
    assert UnfusableTranscendentals([tanh]).uuid() != UnfusableTranscendentals(()).uuid()  # cached apart
