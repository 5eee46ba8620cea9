"""benchmarks/op_profile.py: exclusive per-thread times add up to the thread's busy time."""

from benchmarks.op_profile import exclusive_times


def test_nested_events_count_only_their_own_time():
    # A loop (0-100) whose body runs a (10-30) and b (40-50), b containing c (42-45); then d.
    events = [(40, 50, "b"), (0, 100, "while"), (120, 130, "d"), (10, 30, "a"), (42, 45, "c")]
    own = exclusive_times(events)
    assert own == {"while": 70, "a": 20, "b": 7, "c": 3, "d": 10}
    assert sum(own.values()) == 110  # the union of the intervals


def test_same_start_puts_the_longer_event_outside():
    own = exclusive_times([(0, 5, "inner"), (0, 10, "outer"), (10, 12, "next")])
    assert own == {"outer": 5, "inner": 5, "next": 2}
