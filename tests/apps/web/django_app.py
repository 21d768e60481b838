"""A minimal Django project in one module: settings, urls and views, no database."""

import time

import django
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.urls import path

import common

settings.configure(
    DEBUG=False,
    SECRET_KEY="fastfork-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    USE_TZ=True,
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
)
django.setup()


def whoami(request):
    return JsonResponse(common.whoami("django"))


def echo(request):
    digest = common.Digest()
    # Django reads a body only up to CONTENT_LENGTH (none for a chunked one):
    # read the WSGI input, which ends where the body ends, instead.
    stream = request.environ["wsgi.input"]
    for chunk in iter(lambda: stream.read(65536), b""):
        digest.update(chunk)
    return JsonResponse(digest.result())


def stream(request):
    return StreamingHttpResponse(iter(common.chunks(int(request.GET.get("n", "5")))),
                                 content_type="text/plain")


def slow(request):
    seconds = float(request.GET["s"])
    common.announce(slow="started")
    time.sleep(seconds)
    return JsonResponse({"slept": seconds, "id": common.whoami("django")["id"]})


def block(request):
    common.block_loop(float(request.GET["s"]))
    return JsonResponse(common.whoami("django"))


def requests(request):
    return JsonResponse(common.requests_served())


def nodelay(request):
    return JsonResponse(common.nodelay())


urlpatterns = [path("whoami", whoami), path("nodelay", nodelay), path("echo", echo),
               path("stream", stream), path("slow", slow), path("requests", requests),
               path("block", block)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
