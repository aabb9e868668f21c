"""One Redis client per process for the fast path (auth cache, Lua scripts, counters), and how Lua scripts are
declared and called.

The same code path serves the embedded server (unix socket) and a real Redis (tcp): only REDIS_URL differs.
redis-py's pool notices a fork and reconnects, so gunicorn/Celery prefork children get their own connections.

**KEYS and ARGV by name.** Every Lua script (one file per atomic operation, next to the module that calls it) is a
``LuaScript``: its KEYS and its ARGV are two ``typing.NamedTuple`` classes whose fields are the names the script's
header declares, in the header's order (``tests/test_lua_signatures.py`` compares every header with its
declaration)::

    class CheckLockKeys(NamedTuple):
        lock: str
        usage: str
        bucket: str

    CHECK_LOCK = LuaScript(CHECK_LOCK_LUA, CheckLockKeys, CheckLockArgs, preludes=(TAKE_TOKEN_LUA,))
    reply = CHECK_LOCK(client, CheckLockKeys(lock=..., usage=..., bucket=...), CheckLockArgs(ttl_ms=..., ...))

Built with keyword arguments, a missing or an unknown name is a TypeError (and a mypy error), and Python code reads
a key back by name (``keys.usage``), never by position. A call refuses any other type than the two declared
classes, so no list built by position reaches a script. The tuples go to ``EVALSHA`` as they are: a call costs the
two tuple builds and an identity check, nothing looked up by name, and it calls ``evalsha`` itself rather than
through redis-py's ``Script.__call__``, whose per-call imports and checks cost more than the names do (check-lock
is the hot path).

**Header convention.** The script's first comment lines declare each key and each argument on a line of its own,
in order: ``-- KEYS[<n>] <name>  <what it is>``, ``-- ARGV[<n>] <name>  <what it is>``. A variable-length tail of
ARGV is ``-- ARGV[<n>..] <name>  …`` (``LuaScript(rest=<name>)``, passed as ``rest=`` at call time). Trailing
fields of a NamedTuple whose default is ``None`` are an optional group: given all together or not at all, and left
out of KEYS/ARGV when absent (``KEYS[n]`` is nil in the script).

**Reply convention.** A script answers an array whose first element is a status word — ``ok`` when it did what it
was asked, else what stopped it (``rate_limited``, ``quota``, ``duplicate``, ``rebuild_usage``, …) — followed by
that status's values (integers or strings). redis-py returns the word as bytes, so callers compare with
``b"ok"``. ``billing/take_token.lua`` is a prelude (a Lua function the scripts call, returning a number), not a
script.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import redis
from django.conf import settings
from redis.commands.core import Script
from redis.exceptions import NoScriptError

K = TypeVar("K", bound=tuple[Any, ...])
A = TypeVar("A", bound=tuple[Any, ...])

# Every LuaScript declared in this process, by its file (tests/test_lua_signatures.py checks each one's header).
SCRIPTS: dict[Path, LuaScript[Any, Any]] = {}


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def hash_of(client: redis.Redis, key: str | bytes) -> dict[bytes, bytes]:
    """HGETALL of ``key``, typed as this client answers it. redis-py types a reply's strings ``bytes | str``, since
    only ``decode_responses`` (left off by ``get_redis``) decides which; here they are always bytes."""
    return cast("dict[bytes, bytes]", client.hgetall(key))


@cache
def lua_script(path: Path, *preludes: Path) -> Script:
    """A Lua script file (one per atomic operation, next to the module that uses it), registered once per process.

    ``preludes`` are Lua files defining local functions the script calls (e.g. billing/take_token.lua), prepended
    so one script stays one atomic step. ``LuaScript`` runs it: EVALSHA, loading it again after a Redis restart or
    flush.
    """
    return get_redis().register_script("\n".join(p.read_text() for p in (*preludes, path)))


def _optional_group(fields: type[tuple[Any, ...]]) -> int:
    """How many trailing fields of a NamedTuple class form its optional group (those with a default, which must be
    None: an absent value is left out of the script's KEYS/ARGV, never sent as a stand-in)."""
    defaults: dict[str, Any] = getattr(fields, "_field_defaults", {})
    if any(value is not None for value in defaults.values()):
        raise TypeError(f"{fields.__name__}: an optional field of a Lua script defaults to None")
    return len(defaults)


class LuaScript(Generic[K, A]):
    """A Lua script with its KEYS and ARGV declared by name (the module docstring has the conventions).

    ``keys`` and ``args`` are NamedTuple classes, fields in the header's order; ``rest`` names a variable-length
    tail of ARGV; ``preludes`` are Lua files prepended to it (``lua_script``). Declared scripts are in ``SCRIPTS``.
    """

    __slots__ = (
        "_optional",
        "_optional_args",
        "_optional_keys",
        "_script",
        "arg_names",
        "args",
        "key_names",
        "keys",
        "path",
        "preludes",
        "rest",
    )

    def __init__(
        self, path: Path, keys: type[K], args: type[A], *, rest: str | None = None, preludes: Sequence[Path] = ()
    ) -> None:
        key_names, arg_names = getattr(keys, "_fields", None), getattr(args, "_fields", None)
        if not isinstance(key_names, tuple) or not isinstance(arg_names, tuple):
            raise TypeError(f"{path.name}: KEYS and ARGV are declared as NamedTuple classes")
        self.path, self.keys, self.args, self.rest, self.preludes = path, keys, args, rest, tuple(preludes)
        self.key_names: tuple[str, ...] = key_names
        self.arg_names: tuple[str, ...] = arg_names
        self._optional_keys, self._optional_args = _optional_group(keys), _optional_group(args)
        self._optional = bool(self._optional_keys or self._optional_args)
        self._script: Script | None = None
        SCRIPTS[path] = self

    def __call__(self, client: redis.Redis, keys: K, args: A, rest: Sequence[Any] = ()) -> Any:
        """EVALSHA of the script with ``keys`` and ``args`` (then ``rest``) on ``client`` (a client, not a
        pipeline); after a Redis restart or flush, which forgets loaded scripts, the script is loaded again."""
        if type(keys) is not self.keys or type(args) is not self.args:
            raise TypeError(f"{self.path.name} takes {self.keys.__name__} and {self.args.__name__}")
        script = self._script
        if script is None:
            script = self._script = lua_script(self.path, *self.preludes)
        if self._optional:
            sent_keys, sent_args = self._without_absent_group(keys, args)
        else:
            sent_keys, sent_args = keys, args
        if rest:
            if self.rest is None:
                raise TypeError(f"{self.path.name} declares no variable-length ARGV")
            sent_args = (*sent_args, *rest)
        try:
            return client.evalsha(script.sha, len(sent_keys), *sent_keys, *sent_args)
        except NoScriptError:
            script.sha = client.script_load(script.script)
            return client.evalsha(script.sha, len(sent_keys), *sent_keys, *sent_args)

    def _without_absent_group(self, keys: K, args: A) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """KEYS and ARGV without their optional group when it is absent; refused when only part of it is given."""
        cut_keys, cut_args = len(keys) - self._optional_keys, len(args) - self._optional_args
        given = [value is not None for value in (*keys[cut_keys:], *args[cut_args:])]
        if all(given):
            return keys, args
        if any(given):
            raise TypeError(f"{self.path.name}: an optional group of KEYS/ARGV is given whole or not at all")
        return keys[:cut_keys], args[:cut_args]
