"""A hypothesis fuzz of the engine's request stream: split points, pipelining,
chunk boundaries, and requests that could be read two ways.

Each example runs the engine in this process on a fresh asyncio loop with
one connection on a socketpair (real sockets, no cluster: thousands of
streams in a few seconds), feeds it a stream of requests cut at arbitrary
points, and reads every answer.  The property: every well-formed request is
answered, in order, with exactly its method, path and body; a request that
could be read two ways (Content-Length and chunked, two lengths, a
Transfer-Encoding that does not end in chunked...) gets no answer but a 400,
and nothing after it on that connection is answered at all.
"""

import asyncio
import hashlib
import socket

import pytest

pytest.importorskip("httptools", reason="the web extra is not installed")
from hypothesis import given, settings, strategies as st

from fastfork.engine import load
from tests.engine.parts import Owner, read_body
from tests.web_harness import need_engine, parse_responses

need_engine()
Engine = load().Engine
ANSWER_TIMEOUT = 5.0


async def echo_app(scope, receive, send):
    body = await read_body(receive)
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    answer = b"%s %s %d %s" % (scope["method"].encode(), target, len(body),
                              hashlib.sha256(body).hexdigest()[:16].encode())
    if scope["path"].startswith("/chunked"):
        # No Content-Length: the engine frames it chunked, in two parts.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer[:5], "more_body": True})
        await send({"type": "http.response.body", "body": answer[5:]})
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})


def expected(method, path, body):
    return b"%s %s %d %s" % (method, path, len(body),
                             hashlib.sha256(body).hexdigest()[:16].encode())


async def exchange(pieces, want):
    """Send ``pieces`` (yielding to the loop between them, so the engine reads
    them apart), then read until ``want`` answers came or the server closed."""
    loop = asyncio.get_running_loop()
    engine = Engine(loop, echo_app, {}, keep_alive=5, head_timeout=5)
    client, server = socket.socketpair()
    client.setblocking(False)
    server.setblocking(False)
    owner = Owner()
    engine.attach(server.detach(), owner)
    try:
        for piece in pieces:
            try:
                await loop.sock_sendall(client, piece)
            except (BrokenPipeError, ConnectionResetError):
                break         # refused and closed: the rest is not sent
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        data, closed = b"", False
        while True:
            answers, _ = parse_responses(data)
            if len(answers) >= want:
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), ANSWER_TIMEOUT)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                break
            data += chunk
        answers, rest = parse_responses(data)
        return [(status, body) for status, _, body in answers], rest, closed, owner
    finally:
        client.close()
        engine.close()


def request_bytes(method, path, body, framing, chunk_sizes):
    head = b"%s %s HTTP/1.1\r\nHost: fuzz\r\n" % (method, path)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "chunked":
        out, rest = [head + b"Transfer-Encoding: chunked\r\n\r\n"], body
        for size in chunk_sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        if rest:
            out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
        out.append(b"0\r\n\r\n")
        return b"".join(out)
    return head + b"\r\n"                       # no body


requests_strategy = st.lists(st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT"]),
    st.sampled_from([b"/", b"/a?b=c", b"/chunked", b"/chunked/x%20y", b"/p/q"]),
    st.binary(max_size=300),
    st.sampled_from(["length", "chunked", "none"]),
    st.lists(st.integers(1, 64), min_size=1, max_size=6)), min_size=1, max_size=6)


def split(stream, cuts):
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces, last = [], 0
    for point in points + [len(stream)]:
        if point > last:
            pieces.append(stream[last:point])
            last = point
    return pieces


@settings(max_examples=150, deadline=None)
@given(requests=requests_strategy, cuts=st.lists(st.integers(0, 10 ** 6), max_size=12))
def test_pipelined_requests_cut_anywhere_are_answered_in_order(requests, cuts):
    stream, want = b"", []
    for method, path, body, framing, sizes in requests:
        if framing == "none":
            body = b""
        stream += request_bytes(method, path, body, framing, sizes)
        want.append((200, expected(method, path, body)))
    answers, rest, _, _ = asyncio.run(exchange(split(stream, cuts), len(want)))
    assert answers == want and rest == b""


# Framings that could be read two ways (request smuggling), after a body-less
# lead-in request; each would put the next request's bytes in another place
# depending on which header a reader believes.
AMBIGUOUS = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 6\r\n",
    b"Content-Length: +5\r\n",
    b"Content-Length: 5 5\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    b"Content-Length : 5\r\n",
    b"Content-Length:\r\n 5\r\n",
    b" Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Content-Length: 5\nTransfer-Encoding: chunked\r\n",
]


@settings(max_examples=150, deadline=None)
@given(header=st.sampled_from(AMBIGUOUS), body=st.binary(min_size=0, max_size=40),
       after=st.sampled_from([b"", b"GET /smuggled HTTP/1.1\r\nHost: fuzz\r\n\r\n"]),
       cuts=st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_a_request_that_reads_two_ways_is_refused_and_nothing_after_it_answered(
        header, body, after, cuts):
    lead = b"GET /first HTTP/1.1\r\nHost: fuzz\r\n\r\n"
    bad = b"POST /ambiguous HTTP/1.1\r\nHost: fuzz\r\n" + header + b"\r\n" + body
    stream = lead + bad + after
    answers, rest, closed, owner = asyncio.run(exchange(split(stream, cuts), 3))
    assert answers[0] == (200, expected(b"GET", b"/first", b""))
    assert [status for status, _ in answers[1:]] == [400]
    assert closed and rest == b""
    assert owner.finished == 1
