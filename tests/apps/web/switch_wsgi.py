"""A Flask app for test_switch.py's gunicorn config: environment, module path, directory.

    GET /env/NAME   {"value": the environment variable NAME, or null}
    GET /where      {"cwd", "path": sys.path, "pid"}
    GET /block?s=S  blocks this worker's event loop S seconds (a hang, for --timeout)
"""

import os
import sys

from flask import Flask, jsonify, request

import common

app = Flask(__name__)


@app.get("/env/<name>")
def env(name):
    return jsonify({"value": os.environ.get(name)})


@app.get("/where")
def where():
    return jsonify({"cwd": os.getcwd(), "path": sys.path, "pid": os.getpid()})


@app.get("/block")
def block():
    common.block_loop(float(request.args["s"]))
    return jsonify({"pid": os.getpid()})
