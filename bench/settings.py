"""Bench settings: the production settings (DEBUG off), plus the floor view (bench/urls.py) and quiet logs.

Only `make bench` uses them; nothing here is mounted in a real deployment.
"""

from onceonly_site.settings import *  # noqa: F403
from onceonly_site.settings import LOGGING

ROOT_URLCONF = "bench.urls"
LOGGING["root"]["level"] = "WARNING"
