"""A global counter in Redis: the fix for "memory is not shared" (the demo's part 4).

Each worker counts the requests it served in its own memory, and every
worker adds to one counter in Redis, which all of them share:

    python -m fastfork run tests/apps/redis_counter.py:handle --workers 4

    REDIS_URL=redis://127.0.0.1:6379/0 (the default)

Each request answers ``"<this worker's count> <everyone's count>"``.  With
Redis down, a request answers ``"redis down: ..."`` naming the server, and
the worker keeps serving; once Redis is back, so is the global count.
"""

import os

import redis.asyncio as redis

import fastfork

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEY = os.environ.get("COUNTER_KEY", "fastfork:requests")

served = 0          # this worker's memory: every worker has its own
_client = None


def client():
    # One client per worker, made in the worker (a connection must not be
    # shared across fork).
    global _client
    if _client is None:
        _client = redis.Redis.from_url(URL, socket_timeout=2, socket_connect_timeout=2)
    return _client


async def handle(reader, writer):
    global served
    await reader.readline()
    served += 1
    try:
        total = await client().incr(KEY)
        reply = f"{served} {total}"
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        reply = f"redis down: {URL}: {exc}"
    writer.write(f"{reply} worker={fastfork.worker_id}\n".encode())
    await writer.drain()
    writer.close()
