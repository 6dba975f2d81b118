"""Benchmarks of pplvae against a hand-written PyTorch VAE and Pyro's VAE example recipe.

Run from the repository root (see ``docs/benchmarks.md``)::

    python -m benchmarks.speed        # ms per SVI step, side by side
    python -m benchmarks.quality      # test log p(x) agreement and the papers' numbers
    python -m benchmarks.trace_once   # what pplvae's remaining overhead is made of

``benchmarks/marginal_throughput.py`` (a script) measures the log p(x)
estimator's throughput, ``marginal_ceiling.py`` where its distance to
``torch.mm`` lies and ``marginal_noise.py`` how much that ratio varies for the
same work on this machine; see ``docs/marginal_likelihood.md``.
"""
