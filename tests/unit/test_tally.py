"""The counter tally (store/tally.py): sums across batches, due once an interval has passed."""

from __future__ import annotations

from bridge.store.tally import Tally


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_are_summed_per_key_and_field_until_taken() -> None:
    tally = Tally(clock=Clock())
    tally.add([(("cb:{a}:stats", "x"), 2), (("cb:{a}:stats", "y"), 1)])
    tally.add([(("cb:{a}:stats", "x"), 3), (("cb:{b}:stats", "x"), 1), (("k", "zero"), 0)])
    assert tally.take() == {
        ("cb:{a}:stats", "x"): 5,
        ("cb:{a}:stats", "y"): 1,
        ("cb:{b}:stats", "x"): 1,
    }
    assert tally.take() == {} and len(tally) == 0


def test_due_only_with_counts_and_once_the_interval_has_passed_since_the_last_take() -> None:
    clock = Clock()
    tally = Tally(interval_s=1.0, clock=clock)
    clock.now += 5
    assert not tally.due()  # nothing to write
    tally.add([(("k", "f"), 1)])
    assert tally.due()
    tally.take()
    tally.add([(("k", "f"), 1)])
    clock.now += 0.5
    assert not tally.due()
    clock.now += 0.5
    assert tally.due()
