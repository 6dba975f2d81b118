"""pplvae.timing.fastest: the contender with the least time per unit of work, rounds alternating."""

import time

import pytest

from pplvae.timing import fastest


def test_the_fastest_contender_per_unit_of_work_wins_and_rounds_alternate():
    order = []

    def sleeper(name, seconds):
        return lambda: order.append(name) or time.sleep(seconds)

    contenders = {"slow": sleeper("slow", 0.02), "quick": sleeper("quick", 0.002)}
    assert fastest(contenders, rounds=3) == "quick"
    assert order == ["slow", "quick"] * 3  # each round runs every contender once, in turn
    # "slow" does 100 times the work in 10 times the time: per unit of work it is the faster
    assert fastest(contenders, rounds=2, work={"slow": 100.0, "quick": 1.0}) == "slow"


def test_no_contenders_is_an_error():
    with pytest.raises(ValueError, match="at least one contender"):
        fastest({})
