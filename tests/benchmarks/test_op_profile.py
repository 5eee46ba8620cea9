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


def test_phases_split_a_thread_into_loop_and_other_stretches():
    from benchmarks.op_profile import phases
    events = [(0, 10, "fill"), (10, 20, "copy"), (20, 200, "while.1"), (20, 25, "dot"),
              (25, 30, "tanh"), (30, 35, "dot"), (200, 260, "ThunkExecutor::Execute"),
              (200, 250, "psum"), (205, 245, "Wait")]
    assert phases(events, {"dot", "tanh"}) == [(0, 20, "other"), (20, 35, "loop"),
                                               (200, 250, "other")]
