"""Benchmarks of pplvae against a hand-written PyTorch VAE and Pyro's VAE example recipe.

Run from the repository root (see ``docs/benchmarks.md``)::

    python -m benchmarks.speed        # ms per SVI step, side by side
    python -m benchmarks.quality      # test log p(x) agreement and the papers' numbers
    python -m benchmarks.trace_once   # what pplvae's remaining overhead is made of

    python -m benchmarks.marginal_throughput   # log p(x) of a user's plain-Pyro VAE vs hand-written

See ``docs/benchmarks.md`` and ``docs/marginal_likelihood.md``.
"""
