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


def test_device_times_name_kernels_by_hlo_op_and_measure_idle_gaps():
    from jax.profiler import ProfileData
    from benchmarks.op_profile import device_lines, device_op_times
    # A GPU plane as jax.profiler records it: kernels on stream lines, each with its hlo_op
    # stat; one memset without it. Kernels 0-5 and 3-7 us overlap (two streams), 10-12 us
    # follows a 3 us gap; a host plane and a non-stream line are left out.
    ev = lambda meta, start_us, dur_us, op=None: (
        f"events {{ metadata_id: {meta} offset_ps: {start_us * 10**6} "
        f"duration_ps: {dur_us * 10**6}"
        + (f' stats {{ metadata_id: 1 str_value: "{op}" }}' if op else "") + " }")
    text = f"""
    planes {{ id: 1 name: "/device:GPU:0"
      lines {{ id: 1 name: "Stream #14(Compute)" timestamp_ns: 0
        {ev(1, 0, 5, "fusion.1")} {ev(2, 10, 2, "fusion.1")} {ev(3, 12, 1)} }}
      lines {{ id: 2 name: "Stream #15(MemcpyD2D)" timestamp_ns: 0 {ev(1, 3, 4, "copy.2")} }}
      lines {{ id: 3 name: "XLA Ops" timestamp_ns: 0 {ev(1, 0, 13, "while")} }}
      event_metadata {{ key: 1 value {{ id: 1 name: "kernel_a" }} }}
      event_metadata {{ key: 2 value {{ id: 2 name: "kernel_b" }} }}
      event_metadata {{ key: 3 value {{ id: 3 name: "memset32" }} }}
      stat_metadata {{ key: 1 value {{ id: 1 name: "hlo_op" }} }} }}
    planes {{ id: 2 name: "/host:CPU"
      lines {{ id: 1 name: "python" timestamp_ns: 0 {ev(1, 0, 50)} }}
      event_metadata {{ key: 1 value {{ id: 1 name: "host" }} }} }}"""
    data = ProfileData.from_serialized_xspace(ProfileData.text_proto_to_serialized_xspace(text))
    total, calls, busy, window, events = device_op_times(data)
    assert dict(total) == {"fusion.1": 7000, "copy.2": 4000, "memset32": 1000}
    assert dict(calls) == {"fusion.1": 2, "copy.2": 1, "memset32": 1}
    assert (busy, window, events) == (10000, 13000, 4)  # 0-7 and 10-13 us busy
    assert [line[:3] for line in device_lines(data)] == [
        ("/device:GPU:0", "Stream #14(Compute)", 3), ("/device:GPU:0", "Stream #15(MemcpyD2D)", 1),
        ("/device:GPU:0", "XLA Ops", 1)]
