"""fastfork.web.detect(): which objects are ASGI apps, which are WSGI apps, which neither.

A table of real objects (framework apps are built, not imitated); rows that
need a framework are skipped when it is not installed.  detect() itself needs
no part of the web extra.
"""

import functools

import pytest

from fastfork.web import NotAnAppError, classify, detect


async def asgi3(scope, receive, send):
    pass


def wsgi(environ, start_response):
    return []


class Asgi3Object:
    async def __call__(self, scope, receive, send):
        pass


class WsgiObject:
    def __call__(self, environ, start_response):
        return []


class Asgi2App:
    """uvicorn's ASGI 2 shape: App(scope), then await instance(receive, send)."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


class ThinAsgiMiddleware:
    """A sync __call__ returning the app's coroutine: still ASGI 3."""

    def __init__(self, app):
        self.app = app

    def __call__(self, scope, receive, send):
        return self.app(scope, receive, send)


def starlette_app():
    from starlette.applications import Starlette
    return Starlette()


def fastapi_app():
    from fastapi import FastAPI
    return FastAPI()


def flask_app():
    from flask import Flask
    return Flask("detect-test")


def django_wsgi():
    from django.conf import settings
    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="x", ROOT_URLCONF=[], INSTALLED_APPS=[])
    from django.core.wsgi import get_wsgi_application
    return get_wsgi_application()


def django_asgi():
    django_wsgi()        # configures settings once
    from django.core.asgi import get_asgi_application
    return get_asgi_application()


def a2wsgi_middleware():
    from a2wsgi import WSGIMiddleware
    return WSGIMiddleware(wsgi, workers=1)


APPS = [
    # (id, build, framework to import first or None, kind, uvicorn interface)
    ("async-function", lambda: asgi3, None, "asgi", "asgi3"),
    ("async-partial", lambda: functools.partial(asgi3), None, "asgi", "asgi3"),
    ("async-call-object", Asgi3Object, None, "asgi", "asgi3"),
    ("asgi2-class", lambda: Asgi2App, None, "asgi", "asgi2"),
    ("sync-middleware-3-args", lambda: ThinAsgiMiddleware(asgi3), None, "asgi", "asgi3"),
    ("wsgi-function", lambda: wsgi, None, "wsgi", None),
    ("wsgi-call-object", WsgiObject, None, "wsgi", None),
    ("wsgi-lambda", lambda: (lambda environ, start_response: []), None, "wsgi", None),
    ("starlette", starlette_app, "starlette", "asgi", "asgi3"),
    ("fastapi", fastapi_app, "fastapi", "asgi", "asgi3"),
    ("django-asgi", django_asgi, "django", "asgi", "asgi3"),
    ("a2wsgi-middleware", a2wsgi_middleware, "a2wsgi", "asgi", "asgi3"),
    ("flask", flask_app, "flask", "wsgi", None),
    ("django-wsgi", django_wsgi, "django", "wsgi", None),
]


@pytest.mark.parametrize("build, framework, kind, interface",
                         [row[1:] for row in APPS], ids=[row[0] for row in APPS])
def test_apps_are_recognised(build, framework, kind, interface):
    if framework:
        pytest.importorskip(framework, reason=f"{framework} is not installed (webtest extra)")
    app = build()
    assert detect(app) == kind
    assert classify(app) == (kind, interface)


async def two_args(scope, receive):
    pass


def one_arg(environ):
    pass


def anything(*args, **kwargs):
    pass


async def stream_handler(reader, writer):
    pass


class NotCallable:
    pass


NEITHER = [
    # (id, object, words the message must contain)
    ("none", None, "None is not callable"),
    ("int", 42, "42 (an instance of builtins.int) is not callable"),
    ("import-string", "myapp:app", "got the string 'myapp:app', not an app: pass the app object"),
    ("instance-not-callable", NotCallable(), "test_web_detect.NotCallable) is not callable"),
    ("plain-class", WsgiObject, "the class test_web_detect.WsgiObject is a class, not an app"),
    ("coroutine-2-args", two_args,
     "the coroutine function test_web_detect.two_args(scope, receive) takes 2 positional "
     "arguments, so it is neither"),
    ("function-1-arg", one_arg, "the function test_web_detect.one_arg(environ) takes 1 "
                                "positional argument, so it is neither"),
    ("varargs", anything, "takes an unknown number of arguments"),
    # fastfork's own stream handler is no web app (a sync two-argument callable
    # cannot be told from WSGI, so only the async one is refused).
    ("stream-handler", stream_handler, "stream_handler(reader, writer) takes 2 positional "
                                       "arguments"),
]


@pytest.mark.parametrize("obj, words", [row[1:] for row in NEITHER],
                         ids=[row[0] for row in NEITHER])
def test_neither_is_refused_with_what_it_is(obj, words):
    with pytest.raises(NotAnAppError) as refused:
        detect(obj)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert words in message
    assert "ASGI app (async def app(scope, receive, send))" in message
    assert "WSGI app (def app(environ, start_response))" in message
