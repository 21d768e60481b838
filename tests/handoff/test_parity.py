"""The contract between the two builds of the hand-off, checked.

``backend.API`` names what each module must provide; here, that the classes
the Cython build and the pure-Python twin provide have the same methods with
the same signatures and the same public attributes, that both speak the wire
format of ``wire.py`` and fail on a bad message with the same words.
"""

import inspect
import socket

import pytest

from fastfork.handoff import backend, wire
from tests.implementations import Impl

PARTS = sorted(backend.API)


def _builds():
    return Impl("c").backend, Impl("py").backend


def _methods(cls):
    return {name: inspect.signature(getattr(cls, name)) for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))}


def _attributes(obj):
    return {name for name in dir(obj) if not name.startswith("_")
            and not callable(getattr(obj, name))}


@pytest.mark.parametrize("part", PARTS)
def test_both_builds_provide_the_same_names_methods_and_signatures(part):
    c, py = (getattr(build, part) for build in _builds())
    for name in backend.API[part]:
        c_obj, py_obj = getattr(c, name), getattr(py, name)
        assert inspect.isclass(c_obj) == inspect.isclass(py_obj), name
        if inspect.isclass(c_obj):
            c_methods, py_methods = _methods(c_obj), _methods(py_obj)
            assert set(c_methods) == set(py_methods), name
            for method in c_methods:
                assert c_methods[method] == py_methods[method], f"{name}.{method}"
        elif callable(c_obj):
            assert inspect.signature(c_obj) == inspect.signature(py_obj), name


def test_both_builds_objects_have_the_same_public_attributes():
    c, py = _builds()
    for build in (c, py):
        assert build.dispatcher.IMPLEMENTATION == build.name
    dispatchers = [build.dispatcher.Dispatcher() for build in (c, py)]
    try:
        assert _attributes(dispatchers[0]) == _attributes(dispatchers[1])
    finally:
        for d in dispatchers:
            d.close()
    receivers = []
    try:
        for build in (c, py):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            a.close()
            receivers.append(build.receiver.Receiver(b.detach()))
        assert _attributes(receivers[0]) == _attributes(receivers[1])
        assert {"received", "ended", "wakeups"} <= _attributes(receivers[0])
    finally:
        for r in receivers:
            r.close()
    schedulers = [build.scheduler.LeastConnectionsScheduler(4, 2) for build in (c, py)]
    assert _attributes(schedulers[0]) == _attributes(schedulers[1])


def test_a_build_for_another_wire_format_refuses_to_load():
    # What each C module calls when it loads, with what it compiled in.
    wire.check_build("probe", {"MSG_FDS": wire.MSG_FDS, "SCM_MAX_FD": wire.SCM_MAX_FD})
    with pytest.raises(ImportError, match=r"probe was built for another wire format: "
                                          r"MSG_ACK=9 \(wire.py: 3\)"):
        wire.check_build("probe", {"MSG_FDS": wire.MSG_FDS, "MSG_ACK": 9})


def test_encode_and_parse_are_each_others_inverse():
    lids = [0, 5, wire.MAX_LISTENERS - 1]
    assert wire.parse_to_worker(wire.encode_fds(lids), 0, len(lids)) == lids
    assert wire.parse_to_worker(wire.encode_end(), 0, 0) is None
    for kind in (wire.MSG_ACK, wire.MSG_CLOSED):
        for count in (0, 2, wire.MAX_COUNT):
            assert wire.parse_to_primary(wire.encode_count(kind, count)) == (kind, count)
    with pytest.raises(ValueError):
        wire.encode_count(wire.MSG_FDS, 1)
    with pytest.raises(ValueError):
        wire.encode_count(wire.MSG_ACK, wire.MAX_COUNT + 1)
    for bad in (b"", wire.HEADER.pack(wire.MSG_FDS, 1), wire.HEADER.pack(wire.MSG_ACK, 1) + b"x"):
        with pytest.raises(wire.ProtocolError):
            wire.parse_to_primary(bad)


BAD_TO_WORKER = [
    ("short", b"\x01\x00", 0),
    ("unknown type", wire.HEADER.pack(9, 0), 0),
    ("END with a payload", wire.HEADER.pack(wire.MSG_END, 1), 0),
    ("miscount", wire.HEADER.pack(wire.MSG_FDS, 2) + wire.LID.pack(0), 0),
]


@pytest.mark.parametrize("what, data, _", BAD_TO_WORKER, ids=[c[0] for c in BAD_TO_WORKER])
def test_both_receivers_refuse_a_bad_message_with_wire_pys_words(what, data, _):
    with pytest.raises(wire.ProtocolError) as expected:
        wire.parse_to_worker(data, 0, 0)
    for build in _builds():
        primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        receiver = build.receiver.Receiver(worker_end.detach())
        try:
            primary_end.send(data)
            with pytest.raises(wire.ProtocolError) as got:
                receiver.receive()
            assert str(got.value) == str(expected.value), build.name
        finally:
            receiver.close()
            primary_end.close()
