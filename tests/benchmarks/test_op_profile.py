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


def test_thread_balance_tells_a_slower_core_from_more_work():
    from benchmarks.op_profile import thread_balance
    # Two devices' threads run the same operations; thread b is 1.5x slower on each and
    # thread a waits at the rendezvous. "extra" ran only on a, so it is not shared work.
    a = [(0, 10, "dot"), (10, 14, "tanh"), (14, 20, "extra"), (20, 35, "Wait: pending")]
    b = [(0, 15, "dot"), (15, 21, "tanh"), (21, 35, "psum")]
    c = [(0, 10, "dot"), (10, 14, "tanh"), (14, 18, "tanh")]  # tanh twice: not shared
    out = thread_balance({"a": a, "b": b})
    assert out["a"] == {"busy": 35.0, "wait": 15.0, "shared": 14.0, "slowdown": 1.0}
    assert out["b"]["shared"] == 21.0 and out["b"]["slowdown"] == 1.5
    assert out["b"]["wait"] == 0.0
    assert thread_balance({"a": a, "c": c})["c"]["shared"] == 10.0  # only dot
