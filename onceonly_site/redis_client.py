"""One Redis client per process for the fast path (auth cache, Lua scripts, counters), and how Lua scripts are
declared and called.

The same code path serves the embedded server (unix socket), a real Redis (tcp) and a Redis Cluster
(``redis+cluster://host:port,host:port``, docs/operations.md §"Redis Cluster"): only REDIS_URL differs, and
``RedisClient`` is the type of either client. redis-py's pools notice a fork and reconnect, so gunicorn/Celery
prefork children get their own connections.

**On a cluster.** Every Lua script's keys share one hash tag (an account's ``{a<id>}``, the sign-in throttle's
``{login}``), so each script runs on one node. A cluster that cannot run a command — no node reachable, a slot
without a primary during a failover, ``CLUSTERDOWN``, ``TRYAGAIN`` — raises ``ClusterUnavailable``, a
``redis.ConnectionError``: every fallback written for "Redis unreachable" (check-lock's database decision, the
best-effort counters, the 503 of the API) applies to a cluster as it is. redis-py would raise some of these as
``RedisClusterException``, which is not even a ``redis.RedisError``. A script a node does not know (a replica
promoted since the script was loaded) is sent once with EVAL, which runs it where its keys live and leaves it
loaded there.

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
ARGV is ``-- ARGV[<n>..] <name>  …`` (``LuaScript(rest=<name>)``, passed as ``rest=`` at call time); one of KEYS is
``-- KEYS[<n>..] <name>  …`` (``LuaScript(rest_keys=<name>)``, passed as ``rest_keys=``), after the declared keys
and before ARGV[1]. Each tail is the last line of its kind, and a call passing one the script does not declare is
refused. Trailing fields of a NamedTuple whose default is ``None`` are an optional group: given all together or not
at all, and left out of KEYS/ARGV when absent (``KEYS[n]`` is nil in the script); a KEYS tail follows no optional
keys (it would begin where an absent group was).

**Reply convention.** A script answers an array whose first element is a status word — ``ok`` when it did what it
was asked, else what stopped it (``rate_limited``, ``quota``, ``duplicate``, ``rebuild_usage``, …) — followed by
that status's values (integers or strings). redis-py returns the word as bytes, so callers compare with
``b"ok"``. ``billing/take_token.lua`` is a prelude (a Lua function the scripts call, returning a number), not a
script.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar, cast

import redis
from django.conf import settings
from django_redis.client import DefaultClient
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from onceonly_site.env import cluster_url_parts, is_cluster_url

K = TypeVar("K", bound=tuple[Any, ...])
A = TypeVar("A", bound=tuple[Any, ...])

# Every LuaScript declared in this process, by its file (tests/test_lua_signatures.py checks each one's header).
SCRIPTS: dict[Path, LuaScript[Any, Any]] = {}


# What a cluster raises when it could not run a command at all (redis-py has retried it meanwhile).
_CLUSTER_UNAVAILABLE = (ClusterDownError, TryAgainError, SlotNotCoveredError, RedisClusterUnreachableError)
SOCKET_TIMEOUT_SECONDS = 5
# How often a cluster command is tried again after a connection error, CLUSTERDOWN or a slot without a node (each
# after a topology refresh, 0.25 s and a backoff of at most 0.5 s): redis-py's default, 10, held a web thread for
# seconds per command while a slot had no node; a failover longer than the retries is Redis unreachable anyway.
CLUSTER_RETRIES = 3


class ClusterUnavailable(redis.ConnectionError):
    """A Redis Cluster could not run a command (no node reachable, a slot without a primary, CLUSTERDOWN,
    TRYAGAIN): for the code that called it, Redis is unreachable. The cluster's own error is the cause."""


class Cluster(RedisCluster):
    """``RedisCluster`` whose outages are ``ClusterUnavailable`` (module docstring), for commands and pipelines."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except _CLUSTER_UNAVAILABLE as error:
            raise ClusterUnavailable(f"Redis Cluster unavailable: {error}") from error

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        # The same object, its execute() translated: redis-py builds the pipeline from many private parts of the
        # client, which a subclass's own constructor call would have to copy.
        pipe.__class__ = _ClusterPipeline
        return pipe


class _ClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except _CLUSTER_UNAVAILABLE as error:
            raise ClusterUnavailable(f"Redis Cluster unavailable: {error}") from error


RedisClient: TypeAlias = redis.Redis | RedisCluster


def connect(url: str) -> RedisClient:
    """A client of ``url``: a ``Cluster`` from the nodes a ``redis+cluster://`` URL names, else a ``redis.Redis``;
    the same timeouts either way."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
    parts = cluster_url_parts(url)
    # No health_check_interval: RedisCluster drops it (a node's connection that broke is replaced on its error).
    try:
        return Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parts.nodes],
            username=parts.username,
            password=parts.password,
            ssl=parts.ssl,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=CLUSTER_RETRIES),
        )
    except (RedisClusterException, *_CLUSTER_UNAVAILABLE) as error:
        # The constructor asks the startup nodes for the slots: none answering is "Redis unreachable" too (else a
        # process started during an outage would answer 500 where the fallbacks apply). Not cached: the next call
        # tries again.
        raise ClusterUnavailable(f"Redis Cluster unavailable: {error}") from error


class LazyCluster:
    """The process's cluster client, built at its first command: ``RedisCluster`` asks the startup nodes for the
    slots as it is built, and a process started while none answers must meet "Redis unreachable"
    (``ClusterUnavailable``) at a command, where every fallback is written, not in ``get_redis()``. Until it is
    built, each command tries again; every attribute is the built client's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: RedisClient | None = None
        self._lock = threading.Lock()

    def connected(self) -> RedisClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url)
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connected(), name)


@lru_cache(maxsize=1)
def get_redis() -> RedisClient:
    if is_cluster_url(settings.REDIS_URL):
        return cast("RedisClient", LazyCluster(settings.REDIS_URL))
    return connect(settings.REDIS_URL)


def get_broker_redis() -> redis.Redis:
    """The Celery broker's Redis (its queues are lists there): ``CELERY_BROKER_URL`` when it names another server
    than REDIS_URL (always with a cluster: settings), else ``get_redis()``."""
    url = settings.BROKER_REDIS_URL
    client = get_redis() if url == settings.REDIS_URL else _broker_client(url)
    if not isinstance(client, redis.Redis):  # settings refuse a cluster as the broker
        raise TypeError("the Celery broker is a single Redis, not a cluster")
    return client


@lru_cache(maxsize=2)
def _broker_client(url: str) -> RedisClient:
    return connect(url)


def redis_database(client: RedisClient) -> int:
    """The database number ``client`` uses (always 0 on a cluster)."""
    if isinstance(client, (RedisCluster, LazyCluster)):
        return 0
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


class ClusterCacheClient(DefaultClient):
    """django-redis's client for a Redis Cluster (django-redis 7 has none): the process's ``get_redis()`` cluster
    client. The cache holds a few aggregates (``/metrics``, the Overview's closed hours) read and written by key,
    which RedisCluster routes; LOCATION is ``[REDIS_URL]`` (a list, so django-redis does not split its commas into
    primary and replicas)."""

    def connect(self, index: int = 0) -> Any:
        return get_redis()

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        """The shared client stays connected (django-redis closes only with DJANGO_REDIS_CLOSE_CONNECTION)."""


def hash_of(client: RedisClient, key: str | bytes) -> dict[bytes, bytes]:
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
    tail of ARGV and ``rest_keys`` one of KEYS; ``preludes`` are Lua files prepended to it (``lua_script``).
    Declared scripts are in ``SCRIPTS``.
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
        "rest_keys",
    )

    def __init__(
        self,
        path: Path,
        keys: type[K],
        args: type[A],
        *,
        rest: str | None = None,
        rest_keys: str | None = None,
        preludes: Sequence[Path] = (),
    ) -> None:
        key_names, arg_names = getattr(keys, "_fields", None), getattr(args, "_fields", None)
        if not isinstance(key_names, tuple) or not isinstance(arg_names, tuple):
            raise TypeError(f"{path.name}: KEYS and ARGV are declared as NamedTuple classes")
        self.path, self.keys, self.args, self.rest, self.preludes = path, keys, args, rest, tuple(preludes)
        self.rest_keys = rest_keys
        self.key_names: tuple[str, ...] = key_names
        self.arg_names: tuple[str, ...] = arg_names
        self._optional_keys, self._optional_args = _optional_group(keys), _optional_group(args)
        if rest_keys is not None and self._optional_keys:  # the tail would start where the absent group was
            raise TypeError(f"{path.name}: a variable-length KEYS tail follows no optional keys")
        self._optional = bool(self._optional_keys or self._optional_args)
        self._script: Script | None = None
        SCRIPTS[path] = self

    def __call__(
        self, client: RedisClient, keys: K, args: A, rest: Sequence[Any] = (), rest_keys: Sequence[str] = ()
    ) -> Any:
        """EVALSHA of the script with ``keys`` (then ``rest_keys``) and ``args`` (then ``rest``) on ``client`` (a
        client, not a pipeline). A server that does not know the script (restarted, flushed, a cluster's replica
        promoted since it was loaded) gets it with EVAL: one round trip, on the node of the keys, which keeps it
        loaded."""
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
        if rest_keys:
            if self.rest_keys is None:
                raise TypeError(f"{self.path.name} declares no variable-length KEYS")
            sent_keys = (*sent_keys, *rest_keys)
        try:
            return client.evalsha(script.sha, len(sent_keys), *sent_keys, *sent_args)
        except NoScriptError:
            text = cast("str", script.script)  # lua_script registers text
            return client.eval(text, len(sent_keys), *sent_keys, *sent_args)

    def _without_absent_group(self, keys: K, args: A) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """KEYS and ARGV without their optional group when it is absent; refused when only part of it is given."""
        cut_keys, cut_args = len(keys) - self._optional_keys, len(args) - self._optional_args
        given = [value is not None for value in (*keys[cut_keys:], *args[cut_args:])]
        if all(given):
            return keys, args
        if any(given):
            raise TypeError(f"{self.path.name}: an optional group of KEYS/ARGV is given whole or not at all")
        return keys[:cut_keys], args[:cut_args]
