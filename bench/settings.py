"""Bench settings: the production settings (DEBUG off), plus the floor view (bench/urls.py), quiet logs and a
``Server-Timing`` header on dashboard pages (bench/timing.py; the API passes through it untouched).

Only `make bench` uses them; nothing here is mounted in a real deployment.
"""

from onceonly_site.settings import *  # noqa: F403
from onceonly_site.settings import LOGGING, MIDDLEWARE

ROOT_URLCONF = "bench.urls"
LOGGING["root"]["level"] = "WARNING"
MIDDLEWARE = ["bench.timing.ServerTimingMiddleware", *MIDDLEWARE]
