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
    assert tally.take()[0] == {
        ("cb:{a}:stats", "x"): 5,
        ("cb:{a}:stats", "y"): 1,
        ("cb:{b}:stats", "x"): 1,
    }
    assert tally.take() == ({}, {}, {}, {}) and len(tally) == 0


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


def test_a_key_expires_at_the_latest_time_asked() -> None:
    tally = Tally(clock=Clock())
    tally.add([(("k", "f"), 1)], {"k": 200})
    tally.add([(("k", "f"), 1)], {"k": 100, "j": 50})
    assert tally.take() == ({("k", "f"): 2}, {"k": 200, "j": 50}, {}, {})


def test_forget_drops_one_shops_counts_and_expiry_and_keeps_the_others() -> None:
    tally = Tally(clock=Clock())
    tally.add(
        [(("cb:{a}:stats", "x"), 2), (("cb:{a}:ops:wh5m:1", "0"), 1), (("cb:{ab}:stats", "x"), 4)],
        {"cb:{a}:ops:wh5m:1": 9, "cb:{ab}:ops:wh5m:1": 9},
    )
    assert tally.forget("cb:{a}:") == 2
    assert tally.take() == ({("cb:{ab}:stats", "x"): 4}, {"cb:{ab}:ops:wh5m:1": 9}, {}, {})


def test_a_latest_value_keeps_the_highest_asked_and_is_forgotten_with_its_shop() -> None:
    tally = Tally(clock=Clock())
    tally.add([], latest={("cb:{a}:lastseen", "e"): 5, ("cb:{b}:lastseen", "e"): 1})
    tally.add([], latest={("cb:{a}:lastseen", "e"): 3, ("cb:{b}:lastseen", "e"): 0})
    assert len(tally) == 2
    tally.forget("cb:{b}:")
    assert tally.take() == ({}, {}, {("cb:{a}:lastseen", "e"): 5}, {})


def test_a_list_is_trimmed_to_the_fewest_entries_asked() -> None:
    clock = Clock()
    tally = Tally(interval_s=1.0, clock=clock)
    tally.trim(["cb:{a}:ops:calls:p"], 50)
    tally.trim(["cb:{a}:ops:calls:p", "cb:{b}:ops:calls:q"], 20)
    clock.now += 1
    assert len(tally) == 2 and tally.due()  # a trim alone is written too
    tally.forget("cb:{b}:")
    assert tally.take().trims == {"cb:{a}:ops:calls:p": 20}
