"""The Django app benchmarks/web_compare.py serves: web_apps' answer, from a
minimal Django project (settings, one URL, one view; no database, no middleware).

A module of its own because Django's settings are configured once per
process, on import: the other apps' servers never import it.
"""

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

from benchmarks.web_apps import BODY

settings.configure(
    DEBUG=False,
    SECRET_KEY="fastfork-benchmarks-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    USE_TZ=True,
)
django.setup()


def _hello(request):
    return HttpResponse(BODY, content_type="text/plain; charset=utf-8")


urlpatterns = [path("", _hello)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after setup)

django_app = get_wsgi_application()
