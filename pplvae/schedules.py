"""Learning-rate schedules per epoch, built on ``torch.optim.lr_scheduler``.

:func:`make_scheduler` turns a schedule's name and parameters into a
``torch.optim.lr_scheduler.LRScheduler`` that the trainer steps once after
every epoch, so the rate of epoch e (counted from 0) is the scheduler's value
after e steps:

* ``"constant"``: lr at every epoch (``LambdaLR`` with factor 1).
* ``"burda"``: Burda et al. (2016)'s: stage i = 0, 1, ... lasts 3^i epochs at
  lr * 10^(-i/7) (``LambdaLR`` with :func:`burda_factor`); eight stages are
  their 3280 epochs, after which the last stage's rate stays.
* ``"step"``: lr * gamma^floor(e / step_size) (``StepLR``).
* ``"cosine"``: lr_min + (lr - lr_min) (1 + cos(pi e / epochs)) / 2 (``CosineAnnealingLR``
  with T_max = the run's epochs).

The scheduler's ``state_dict`` goes in the checkpoint, so a resumed run
continues the schedule where it stopped.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, section 5: "we trained for 3^i passes over the data
        with learning rate 0.001 * 10^(-i/7) for i = 0 ... 7".
    [2] I. Loshchilov, F. Hutter (2017), "SGDR: Stochastic Gradient Descent with
        Warm Restarts", ICLR, eq. 5 (the cosine schedule, without restarts).
"""

from __future__ import annotations

import torch

__all__ = ["BURDA_STAGES", "SCHEDULES", "burda_epochs", "burda_factor", "burda_stage", "make_scheduler"]

#: Schedule names :func:`make_scheduler` accepts.
SCHEDULES = ("constant", "burda", "step", "cosine")
#: Burda et al.'s number of stages: 3^0 + ... + 3^7 = 3280 epochs.
BURDA_STAGES = 8


def burda_epochs(stages: int = BURDA_STAGES) -> int:
    """Epochs in the first ``stages`` stages of Burda's schedule: (3^stages - 1) / 2 (8 stages: 3280).

    Example:
        >>> [burda_epochs(s) for s in (1, 2, 3, 5, 8)]
        [1, 4, 13, 121, 3280]
    """
    return (3**stages - 1) // 2


def burda_stage(epoch: int) -> int:
    """The stage i of Burda's schedule that epoch ``epoch`` (counted from 0) belongs to.

    Stage i covers epochs (3^i - 1)/2 to (3^(i+1) - 1)/2 - 1.

    Example:
        >>> [burda_stage(e) for e in (0, 1, 3, 4, 12, 13, 3279)]
        [0, 1, 1, 2, 2, 3, 7]
    """
    stage = 0
    while burda_epochs(stage + 1) <= epoch:
        stage += 1
    return stage


def burda_factor(epoch: int, stages: int = BURDA_STAGES) -> float:
    """Burda's learning-rate factor 10^(-i/7) at epoch ``epoch`` (from 0), i = its stage ([1]).

    Past the last of ``stages`` stages the last stage's factor stays.

    Example:
        >>> round(burda_factor(0), 6), round(burda_factor(1), 6), round(burda_factor(3279), 6)
        (1.0, 0.719686, 0.1)
    """
    return 10 ** (-min(burda_stage(epoch), stages - 1) / 7)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "constant",
    epochs: int = 1,
    step_size: int = 1,
    gamma: float = 0.1,
    lr_min: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch learning-rate scheduler over ``optimizer``'s current rates.

    Args:
        optimizer: its ``lr`` is the rate of epoch 0.
        name: one of :data:`SCHEDULES`.
        epochs: the run's epochs (T_max of ``"cosine"``).
        step_size, gamma: ``"step"`` multiplies the rate by ``gamma`` every ``step_size`` epochs.
        lr_min: the rate ``"cosine"`` ends at.

    Returns:
        a ``torch.optim.lr_scheduler`` scheduler; call its ``step()`` once after each epoch.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        >>> scheduler = make_scheduler(opt, "burda")
        >>> rates = []
        >>> for epoch in range(5):
        ...     rates.append(round(opt.param_groups[0]["lr"], 7))
        ...     opt.step(); scheduler.step()
        >>> rates
        [0.001, 0.0007197, 0.0007197, 0.0007197, 0.0005179]
    """
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant)
    if name == "burda":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, burda_factor)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr_min)
    raise ValueError(f"Unknown learning-rate schedule {name!r}; choose one of {SCHEDULES}.")


def _constant(epoch: int) -> float:
    return 1.0

