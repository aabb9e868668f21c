"""Loads the Lua scripts that sit next to this module (one script per atomic operation)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.commands.core import Script

from onceonly_site.redis_client import get_redis

_HERE = Path(__file__).resolve().parent


@cache
def script(name: str) -> Script:
    """A registered script: EVALSHA, falling back to EVAL (and caching) after a Redis restart or flush."""
    return get_redis().register_script((_HERE / f"{name}.lua").read_text())
