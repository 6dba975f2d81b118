"""KL warm-up: anneal the KL weight beta from 0 to its target.

Sønderby et al. (2016, sec. 2.3) multiply the KL term by a weight that grows
linearly from 0 to 1 over the first N_t epochs ("warm-up"), so that early in
training the units are not pushed to the prior before they carry
information. :func:`kl_warmup_weight` gives that schedule towards any target
beta; the trainer evaluates it at the fractional epoch
``epoch + batch / num_batches`` (or at the step count) before every step and
assigns the result to the objective's ``beta``.

References:

[1] Sønderby, Raiko, Maaløe, Sønderby & Winther (2016), Ladder Variational
    Autoencoders, NeurIPS.
"""

from __future__ import annotations

__all__ = ["FixedBeta", "kl_warmup_weight"]


def kl_warmup_weight(step_or_epoch: float, warmup: float, target: float = 1.0) -> float:
    """Linear warm-up ``target * min(1, step_or_epoch / warmup)``.

    :param step_or_epoch: progress so far (steps, or possibly fractional
        epochs), ``>= 0``, in the same unit as ``warmup``.
    :param warmup: length of the warm-up, ``>= 0``; ``0`` means no warm-up
        (the target from the start).
    :param target: the weight reached at the end of the warm-up.
    :returns: the KL weight beta to use now.
    :raises ValueError: if ``step_or_epoch`` or ``warmup`` is negative.

    >>> [kl_warmup_weight(e, warmup=4, target=2.0) for e in (0, 1, 2, 4, 10)]
    [0.0, 0.5, 1.0, 2.0, 2.0]
    """
    if step_or_epoch < 0 or warmup < 0:
        raise ValueError(f"expected step_or_epoch >= 0 and warmup >= 0, got {step_or_epoch}, {warmup}")
    if warmup == 0:
        return float(target)
    return float(target) * min(1.0, step_or_epoch / warmup)


class FixedBeta:
    """Mixin for objectives without a KL term to weight (IWAE, MMD-VAE).

    They still expose ``beta`` so a trainer can treat all objectives alike;
    it reads 1, assigning 1 is a no-op (a finished warm-up), and assigning
    anything else raises ``ValueError`` naming the objective.
    """

    objective_name = "this objective"

    @property
    def beta(self) -> float:
        return 1.0

    @beta.setter
    def beta(self, value: float) -> None:
        if value != 1.0:
            raise ValueError(
                f"{self.objective_name} has no KL weight: beta must be 1 (got {value}); "
                "beta and KL warm-up apply to 'elbo' and 'elbo-analytic'"
            )
