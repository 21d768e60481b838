"""The scheduler's rules as tables of steps, run against both implementations.

Each case is a credit window and a list of steps ``"method args... -> result"``:
the result is the return value, or the name of the exception the step raises;
a step without ``->`` must just not raise.  ``sub`` is ``subscribe``, ``unsub``
``unsubscribe``.
The least-connections cases (``LEAST_CASES``) also give ``worker_connections``.
"""


import pytest
from hypothesis import given, settings, strategies as st

from tests.implementations import BOTH


@pytest.fixture
def sched_mod(impl):
    """The scheduler module of the implementation under test."""
    return impl.scheduler


METHODS = {"add": "add", "remove": "remove", "sub": "subscribe", "unsub": "unsubscribe",
           "retire": "retire",
           "full": "set_full", "stalled": "set_stalled", "withdraw": "withdraw",
           "pick": "pick", "ack": "ack", "available": "available", "inflight": "inflight",
           "closed": "closed", "open": "open_connections"}
ERRORS = {"ValueError": ValueError, "KeyError": KeyError}

CASES = {
    "round-robin in slot order": (2, [
        "add 0", "add 1", "add 2", "sub 0 0", "sub 1 0", "sub 2 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 2",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 2",
        "pick 0 -> -1",
    ]),
    "workers without credit are skipped": (1, [
        "add 0", "add 1", "add 2", "sub 0 0", "sub 1 0", "sub 2 0",
        "pick 0 -> 0", "pick 0 -> 1", "ack 0 1",
        "pick 0 -> 2", "pick 0 -> 0", "pick 0 -> -1",
    ]),
    "ack restores credit": (2, [
        "add 0", "sub 0 0",
        "pick 0 -> 0", "pick 0 -> 0", "pick 0 -> -1", "inflight 0 -> 2",
        "ack 0 1", "inflight 0 -> 1", "pick 0 -> 0", "pick 0 -> -1",
        "ack 0 2", "inflight 0 -> 0", "ack 0 0", "inflight 0 -> 0",
    ]),
    "over-ack raises and changes nothing": (4, [
        "add 0", "sub 0 0", "pick 0 -> 0",
        "ack 0 2 -> ValueError", "ack 0 -1 -> ValueError", "inflight 0 -> 1",
        "ack 0 1", "ack 0 1 -> ValueError", "inflight 0 -> 0",
    ]),
    "retired worker gets nothing but still acks": (2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "retire 0",
        "pick 0 -> 1", "pick 0 -> 1", "pick 0 -> -1",
        "inflight 0 -> 1", "ack 0 1", "inflight 0 -> 0", "pick 0 -> -1",
        "available 0 -> 0", "remove 0 -> 0",
    ]),
    "a worker that unsubscribes gets nothing more from that listener only": (8, [
        "add 0", "add 1", "sub 0 0", "sub 0 1", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "unsub 0 0",
        "pick 0 -> 1", "pick 0 -> 1", "pick 1 -> 0",
        "inflight 0 -> 2", "ack 0 2", "unsub 0 64 -> ValueError", "unsub 9 0 -> KeyError",
    ]),
    "a worker gets only listeners it subscribed to, one cursor each": (8, [
        "add 0", "add 1", "add 2",
        "sub 0 0", "sub 0 1", "sub 1 0", "sub 2 1",
        "pick 0 -> 0", "pick 0 -> 1",
        "pick 1 -> 0", "pick 1 -> 2", "pick 1 -> 0",
        "pick 0 -> 0", "pick 0 -> 1",
        "pick 2 -> -1", "pick 63 -> -1", "sub 2 63", "pick 63 -> 2",
    ]),
    "a removed slot is reused fresh": (3, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0",
        "remove 0 -> 2", "inflight 0 -> KeyError", "remove 0 -> KeyError",
        "add 0", "inflight 0 -> 0", "add 0 -> ValueError",
        "pick 0 -> 1",            # the new worker in slot 0 has not subscribed
        "sub 0 0", "pick 0 -> 0", "pick 0 -> 1",
    ]),
    "available sums the credit of eligible workers": (3, [
        "available 0 -> 0", "add 0", "add 1", "add 2",
        "sub 0 0", "sub 1 0", "sub 2 1",
        "available 0 -> 6", "available 1 -> 3", "available 2 -> 0",
        "pick 0 -> 0", "available 0 -> 5",
        "retire 1", "available 0 -> 2", "available 1 -> 3",
        "remove 0 -> 1", "available 0 -> 0",
    ]),
    "pick is -1 when nobody is eligible": (1, [
        "pick 0 -> -1", "add 0", "pick 0 -> -1", "sub 0 1", "pick 0 -> -1",
        "pick 1 -> 0", "pick 1 -> -1", "retire 0", "ack 0 1", "pick 1 -> -1",
    ]),
    "slots can be sparse": (1, [
        "add 5", "add 2", "sub 5 0", "sub 2 0",
        "pick 0 -> 2", "pick 0 -> 5", "pick 0 -> -1", "inflight 3 -> KeyError",
    ]),
    "a worker at its fd limit gets nothing until it has room (rule 11)": (2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "full 0 1", "available 0 -> 2",
        "pick 0 -> 1", "pick 0 -> 1", "pick 0 -> -1",
        "ack 0 1", "inflight 0 -> 0", "available 0 -> 0",    # it still acknowledges
        "full 0 1", "full 0 0", "available 0 -> 2", "pick 0 -> 0",
        "full 0 0", "pick 0 -> 0", "pick 0 -> -1",
    ]),
    "room again does not undo a retire, nor a remove": (2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "full 0 1", "retire 0", "full 0 0", "available 0 -> 2",
        "pick 0 -> 1", "pick 0 -> 1", "pick 0 -> -1",
        "full 1 1", "remove 1 -> 2", "add 1", "sub 1 0", "pick 0 -> 1",
    ]),
    "a stalled worker gets nothing until its loop runs again (rule 12)": (2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "stalled 0 1", "available 0 -> 2",
        "pick 0 -> 1", "pick 0 -> 1", "pick 0 -> -1",
        "ack 0 1", "inflight 0 -> 0", "available 0 -> 0",    # it still acknowledges
        "stalled 0 1", "stalled 0 0", "available 0 -> 2", "pick 0 -> 0",
    ]),
    "a stall and the fd limit are separate reasons; neither undoes a retire": (2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "stalled 0 1", "full 0 1", "stalled 0 0", "pick 0 -> 1",   # still full
        "full 0 0", "pick 0 -> 0",
        "full 0 1", "stalled 0 1", "full 0 0", "pick 0 -> 1",      # still stalled
        "retire 0", "stalled 0 0", "pick 0 -> -1", "available 0 -> 0",
    ]),
    "withdraw takes back what is in flight, as if never sent (rule 13)": (3, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0", "inflight 0 -> 2",
        "withdraw 0 3 -> ValueError", "withdraw 0 -1 -> ValueError", "inflight 0 -> 2",
        "stalled 0 1", "withdraw 0 2", "inflight 0 -> 0", "available 0 -> 2",
        "ack 0 1 -> ValueError", "withdraw 0 0", "withdraw 2 0 -> KeyError",
        "stalled 0 0", "available 0 -> 5",
    ]),
    "bad arguments": (1, [
        "add -1 -> ValueError", "sub 0 0 -> KeyError", "retire 0 -> KeyError",
        "full 0 1 -> KeyError", "stalled 0 1 -> KeyError", "withdraw 0 0 -> KeyError",
        "ack 0 1 -> KeyError", "inflight 0 -> KeyError", "remove 0 -> KeyError",
        "add 0", "sub 0 64 -> ValueError", "sub 0 -1 -> ValueError",
    ]),
}


# LeastConnectionsScheduler: window, worker_connections, steps (rules 6-10).
LEAST_CASES = {
    "equal counts: round-robin exactly": (2, 0, [
        "add 0", "add 1", "add 2", "sub 0 0", "sub 1 0", "sub 2 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 2", "pick 0 -> 0", "pick 0 -> 1",
        "pick 0 -> 2", "pick 0 -> -1",
    ]),
    "fewest open wins, whatever the cursor": (8, 0, [
        "add 0", "add 1", "add 2", "sub 0 0", "sub 1 0", "sub 2 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 2",
        "ack 0 1", "ack 1 1", "ack 2 1", "closed 1 1", "open 1 -> 0",
        "pick 0 -> 1", "closed 0 1", "closed 2 1",
        # 0 and 2 have 0 open, 1 has 1: after 1 (picked last) comes 2.
        "pick 0 -> 2", "pick 0 -> 0", "pick 0 -> 1",
    ]),
    "a busy worker gets nothing while others have fewer": (8, 0, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "ack 0 1",           # 0 keeps one open (a slow request)
        "pick 0 -> 1", "ack 1 1", "closed 1 1",
        "pick 0 -> 1", "ack 1 1", "closed 1 1",
        "pick 0 -> 1", "ack 1 1", "closed 1 1", "open 0 -> 1", "open 1 -> 0",
    ]),
    "a worker with connections in flight comes after those that took theirs": (8, 0, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0",                      # 0 has not taken it (its loop is blocked)
        "pick 0 -> 1", "ack 1 1",           # 1 took its one
        "pick 0 -> 1", "ack 1 1",           # 1 again, though it has more open (2 to 1)
        "pick 0 -> 1", "open 0 -> 1", "open 1 -> 3",
        "pick 0 -> 0",                      # both have one in flight: fewer open wins
        "ack 0 2", "ack 1 1", "closed 1 3",
        "pick 0 -> 1",                      # nothing in flight anywhere: 1 has 0 open
    ]),
    "closes count only what was acknowledged": (4, 0, [
        "add 0", "sub 0 0", "pick 0 -> 0", "pick 0 -> 0",
        "closed 0 1 -> ValueError", "ack 0 1", "closed 0 2 -> ValueError",
        "closed 0 -1 -> ValueError", "open 0 -> 2", "closed 0 1", "open 0 -> 1",
        "inflight 0 -> 1", "closed 0 1 -> ValueError", "ack 0 1", "closed 0 1",
        "open 0 -> 0", "closed 0 0",
    ]),
    "the credit window still bounds a frozen worker": (2, 0, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0", "pick 0 -> 1",
        "ack 1 2",                          # 0 froze: it acknowledges nothing
        "pick 0 -> 1", "ack 1 1",           # 1 has 3 open, 0 has 2 but no credit
        "pick 0 -> 1", "inflight 0 -> 2", "available 0 -> 1",
        "pick 0 -> 1", "pick 0 -> -1", "open 0 -> 2", "open 1 -> 5",
    ]),
    "the cap leaves connections to the backlog": (8, 2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0", "available 0 -> 4",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0", "pick 0 -> 1",
        "available 0 -> 0", "pick 0 -> -1",
        "ack 0 2", "available 0 -> 0", "closed 0 1", "available 0 -> 1",
        "pick 0 -> 0", "pick 0 -> -1", "open 0 -> 2", "open 1 -> 2",
    ]),
    "cap below the window: the smaller counts": (4, 1, [
        "add 0", "sub 0 0", "available 0 -> 1", "pick 0 -> 0", "available 0 -> 0",
        "ack 0 1", "closed 0 1", "available 0 -> 1",
    ]),
    "remove forgets the open count; retire keeps counting closes": (4, 0, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0", "ack 0 1",
        "remove 0 -> 1", "open 0 -> KeyError", "closed 0 1 -> KeyError",
        "add 0", "open 0 -> 0", "sub 0 0", "pick 0 -> 0",
        "retire 1", "ack 1 1", "closed 1 1", "open 1 -> 0", "pick 0 -> 0",
    ]),
    "a worker at its fd limit is skipped, however few it has open": (4, 0, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "ack 0 1", "closed 0 1", "full 0 1",
        "pick 0 -> 1", "pick 0 -> 1", "available 0 -> 2",
        "ack 1 2", "full 0 0", "pick 0 -> 0", "open 0 -> 1", "open 1 -> 2",
    ]),
    "withdrawn connections were never open (rule 13)": (4, 2, [
        "add 0", "add 1", "sub 0 0", "sub 1 0",
        "pick 0 -> 0", "pick 0 -> 1", "pick 0 -> 0", "pick 0 -> 1",
        "pick 0 -> -1",                                      # both at the cap of 2
        "stalled 0 1", "withdraw 0 2", "open 0 -> 0", "inflight 0 -> 0",
        "closed 0 1 -> ValueError",                          # nothing it took is open
        "stalled 0 0", "pick 0 -> 0", "open 0 -> 1",
        "ack 1 1", "withdraw 1 1", "open 1 -> 1", "closed 1 1", "open 1 -> 0",
    ]),
    "listeners and sparse slots as in round-robin": (1, 0, [
        "add 5", "add 2", "sub 5 1", "sub 2 0",
        "pick 1 -> 5", "pick 0 -> 2", "pick 0 -> -1", "pick 1 -> -1",
        "pick 3 -> -1", "open 3 -> KeyError",
    ]),
}


def run_step(sched, step):
    call, _, expect = step.partition("->")
    name, *args = call.split()
    method = getattr(sched, METHODS[name])
    args = [int(a) for a in args]
    expect = expect.strip()
    if expect in ERRORS:
        with pytest.raises(ERRORS[expect]):
            method(*args)
    elif expect:
        assert method(*args) == int(expect), step
    else:
        method(*args)


@pytest.mark.parametrize("window, steps", list(CASES.values()), ids=list(CASES))
def test_rules(sched_mod, window, steps):
    sched = sched_mod.RoundRobinScheduler(window)
    assert sched.window == window
    for step in steps:
        run_step(sched, step)


@pytest.mark.parametrize("window, cap, steps", list(LEAST_CASES.values()), ids=list(LEAST_CASES))
def test_least_rules(sched_mod, window, cap, steps):
    sched = sched_mod.LeastConnectionsScheduler(window, cap)
    assert (sched.window, sched.worker_connections) == (window, cap)
    for step in steps:
        run_step(sched, step)


def test_round_robin_counts_no_closes(sched_mod):
    sched = sched_mod.RoundRobinScheduler(2)
    sched.add(0)
    sched.subscribe(0, 0)
    sched.pick(0)
    sched.ack(0, 1)
    with pytest.raises(ValueError, match="round-robin does not count them"):
        sched.closed(0, 1)
    with pytest.raises(KeyError):
        sched.closed(1, 1)


def test_scheduler_for_maps_the_policy(sched_mod):
    assert type(sched_mod.scheduler_for("rr", 3)) is sched_mod.RoundRobinScheduler
    least = sched_mod.scheduler_for("least", 3, 5)
    assert type(least) is sched_mod.LeastConnectionsScheduler
    assert (least.window, least.worker_connections) == (3, 5)
    with pytest.raises(ValueError, match="worker_connections needs policy least"):
        sched_mod.scheduler_for("rr", 3, 5)
    with pytest.raises(ValueError, match="policy 'none' has no scheduler"):
        sched_mod.scheduler_for("none", 3)
    with pytest.raises(ValueError, match="worker_connections must be >= 0"):
        sched_mod.LeastConnectionsScheduler(3, -1)


@pytest.mark.parametrize("window", [0, -3])
def test_window_must_be_positive(sched_mod, window):
    with pytest.raises(ValueError, match="credit window must be >= 1"):
        sched_mod.RoundRobinScheduler(window)


def test_many_slots(sched_mod):
    # Beyond the first allocation of the C arrays.
    sched = sched_mod.RoundRobinScheduler(1)
    for slot in range(100):
        sched.add(slot)
        sched.subscribe(slot, 7)
    assert sched.available(7) == 100
    assert [sched.pick(7) for _ in range(101)] == list(range(100)) + [-1]


ERROR_CALLS = [("add", (-1,)), ("add", (0,)), ("remove", (9,)), ("subscribe", (0, 64)),
               ("subscribe", (9, 0)), ("retire", (9,)), ("set_full", (9, True)), ("ack", (0, 1)),
               ("set_stalled", (9, True)), ("withdraw", (9, 1)), ("withdraw", (0, 1)),
               ("ack", (0, -1)), ("inflight", (9,))]


def test_same_error_messages():
    """Both builds say the same thing, so logs do not depend on the build."""
    messages = []
    for impl in BOTH:
        sched = impl.scheduler.RoundRobinScheduler(2)
        sched.add(0)
        said = []
        for name, args in ERROR_CALLS:
            with pytest.raises((ValueError, KeyError)) as info:
                getattr(sched, name)(*args)
            said.append((info.type, str(info.value)))
        messages.append(said)
    assert messages[0] == messages[1]


OPS = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 6)),
    st.tuples(st.just("remove"), st.integers(0, 6)),
    st.tuples(st.just("subscribe"), st.integers(0, 6), st.integers(0, 63)),
    st.tuples(st.just("retire"), st.integers(0, 6)),
    st.tuples(st.just("set_full"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("set_stalled"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("withdraw"), st.integers(0, 6), st.integers(-1, 3)),
    st.tuples(st.just("pick"), st.integers(0, 63)),
    st.tuples(st.just("pick"), st.integers(0, 2)),
    st.tuples(st.just("ack"), st.integers(0, 6), st.integers(0, 3)),
    st.tuples(st.just("available"), st.integers(0, 63)),
    st.tuples(st.just("inflight"), st.integers(0, 6)),
    st.tuples(st.just("closed"), st.integers(0, 6), st.integers(-1, 3)),
    st.tuples(st.just("open_connections"), st.integers(0, 6)),
)


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 4), cap=st.one_of(st.none(), st.integers(0, 4)),
       ops=st.lists(OPS, max_size=60))
def test_builds_agree(window, cap, ops):
    """Any sequence of calls gives the same results in both builds
    (``cap`` None: round-robin; else least connections with that cap)."""
    if cap is None:
        scheds = [impl.scheduler.RoundRobinScheduler(window) for impl in BOTH]
        ops = [op for op in ops if op[0] != "open_connections"]
    else:
        scheds = [impl.scheduler.LeastConnectionsScheduler(window, cap) for impl in BOTH]
    for name, *args in ops:
        outcomes = []
        for sched in scheds:
            try:
                outcomes.append(getattr(sched, name)(*args))
            except (ValueError, KeyError) as exc:
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], (name, args)
