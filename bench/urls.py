from django.urls import path

from bench.views import floor
from onceonly_site.urls import handler400, handler404, handler500  # noqa: F401
from onceonly_site.urls import urlpatterns as site

urlpatterns = [path("bench/floor", floor), *site]
