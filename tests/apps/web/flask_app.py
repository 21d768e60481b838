"""A Flask app (WSGI), served through a2wsgi's thread pool."""

import time

from flask import Flask, Response, jsonify, request

import common

app = Flask(__name__)


@app.get("/whoami")
def whoami():
    return jsonify(common.whoami("flask"))


@app.post("/echo")
def echo():
    digest = common.Digest()
    # request.stream: read as it arrives, chunked or not (fastfork.web tells
    # Werkzeug the input is terminated).
    for chunk in iter(lambda: request.stream.read(65536), b""):
        digest.update(chunk)
    return jsonify(digest.result())


@app.get("/stream")
def stream():
    pieces = common.chunks(int(request.args.get("n", "5")))
    return Response(iter(pieces), mimetype="text/plain")


@app.get("/slow")
def slow():
    seconds = float(request.args["s"])
    common.announce(slow="started")
    time.sleep(seconds)     # a WSGI handler blocks its thread, not the loop
    return jsonify({"slept": seconds, "id": common.whoami("flask")["id"]})


@app.get("/block")
def block():
    common.block_loop(float(request.args["s"]))
    return jsonify(common.whoami("flask"))


@app.get("/spin")
def spin():
    # CPU-bound: on a pool thread, it keeps its worker's core busy, not its loop.
    end = time.perf_counter() + float(request.args["ms"]) / 1000
    while time.perf_counter() < end:
        pass
    return "spun"


@app.get("/requests")
def requests():
    return jsonify(common.requests_served())


@app.get("/scheme")
def scheme():
    return jsonify({"scheme": request.scheme, "id": common.whoami("flask")["id"]})


@app.get("/nodelay")
def nodelay():
    return jsonify(common.nodelay())


@app.get("/server")
def server():
    return jsonify({"host": request.environ["SERVER_NAME"],
                    "port": int(request.environ["SERVER_PORT"])})


@app.get("/client")
def client():
    return jsonify({"host": request.environ["REMOTE_ADDR"],
                    "port": int(request.environ["REMOTE_PORT"])})
