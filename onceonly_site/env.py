"""Typed readers for environment variables.

Every setting is read through one of these helpers so that a bad value stops the process at start-up with a
message naming the variable, instead of surfacing later as a confusing runtime error (healthchecks' envbool/envint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, Any]:
    """Turn a DATABASE_URL into a Django DATABASES entry.

    Supported: ``postgres://`` / ``postgresql://`` (psycopg 3) and ``sqlite:///relative`` or
    ``sqlite:////absolute``. Anything else is refused, loudly.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no database (postgresql://user@host:5432/NAME)")
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} has an invalid port") from None
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port or ""),
            "OPTIONS": options,
        }
    if scheme == "sqlite":
        # sqlite:///var/x.sqlite3 is relative to the working directory, sqlite:////abs/x.sqlite3 absolute.
        raw_path = url[len("sqlite://") :]
        path = raw_path[1:] if raw_path.startswith("/") else raw_path
        if not path:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no file (sqlite:///var/onceonly.sqlite3)")
        if path == ":memory:":
            return sqlite_database(Path(":memory:"))
        return sqlite_database(Path(path))
    raise ImproperlyConfigured(f"DATABASE_URL scheme {scheme!r} is not supported; use postgresql://… or sqlite:///path")


def sqlite_database(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # The dev stack has a web server, a worker and beat writing to one file: WAL lets readers run
            # beside the writer, IMMEDIATE takes the write lock up front instead of failing mid-transaction.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }


def redis_url_with_db(url: str, db: int) -> str:
    """Return the same Redis URL pointing at database number ``db`` (tcp and unix-socket forms)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        query["db"] = str(db)
        rendered = "&".join(f"{k}={v}" for k, v in query.items())
        return f"unix://{parts.path}?{rendered}"
    if parts.scheme in {"redis", "rediss"}:
        netloc = parts.netloc
        rest = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{netloc}/{db}{rest}"
    if parts.scheme in CLUSTER_SCHEMES:
        if db != 0:
            raise ImproperlyConfigured(f"a Redis Cluster has database 0 only, not {db}")
        return url
    raise ImproperlyConfigured(
        f"REDIS_URL scheme {parts.scheme!r} is not supported; use redis://, rediss:// or unix://"
    )


# A Redis Cluster: ``redis+cluster://[user:password@]host:port,host:port[/0]`` (``rediss+cluster://`` for TLS).
CLUSTER_SCHEMES = {"redis+cluster", "rediss+cluster"}


@dataclass(frozen=True)
class ClusterUrl:
    nodes: tuple[tuple[str, int], ...]  # the startup nodes: any reachable one tells the client the others
    username: str | None
    password: str | None
    ssl: bool


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_url_parts(url: str) -> ClusterUrl:
    """The parts of a cluster URL; ValueError saying what is wrong with one that is malformed."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError("its scheme is not redis+cluster:// or rediss+cluster://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.strip().rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host  # [::1]:7000
        well_formed = host and not any(c.isspace() for c in host) and (bracketed or ":" not in host)
        if not well_formed or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{node.strip() or '(empty)'!r} is not host:port (every node needs its port)")
        nodes.append((host, int(port)))
    if parts.path.strip("/") not in {"", "0"}:
        raise ValueError("a Redis Cluster has database 0 only (end the URL with /0 or nothing)")
    if parts.query or parts.fragment:
        raise ValueError("a cluster URL takes no ?options")
    return ClusterUrl(
        nodes=tuple(nodes),
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+cluster",
    )


def redis_db_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return 0
    if parts.scheme == "unix":
        return int(parse_qs(parts.query).get("db", ["0"])[-1])
    path = parts.path.strip("/")
    return int(path) if path else 0


def celery_url_from_redis(url: str) -> str:
    """Kombu spells a unix-socket Redis as ``redis+socket:///path?virtual_host=DB``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis+socket://{parts.path}?virtual_host={redis_db_of(url)}"
    return url


def validate_redis_url(url: str, *, name: str = "REDIS_URL", cluster: bool = True) -> str:
    try:
        parts = urlsplit(url)
        # A port that is not a number from 0 to 65535 is a ValueError here (a cluster's nodes: cluster_url_parts).
        port = None if parts.scheme in CLUSTER_SCHEMES else parts.port
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} {url!r} is not a valid URL: {error}") from None
    if cluster and parts.scheme in CLUSTER_SCHEMES:
        try:
            cluster_url_parts(url)
        except ValueError as error:
            raise ImproperlyConfigured(
                f"{name} {url!r} is not a Redis Cluster URL: {error}; "
                "use redis+cluster://host1:6379,host2:6379,host3:6379 (or rediss+cluster:// for TLS)"
            ) from None
        return url
    if parts.scheme in {"redis", "rediss"} and (not parts.hostname or port == 0):
        raise ImproperlyConfigured(f"{name} {url!r} names no host (or port 0); use redis://host:6379/0")
    if parts.scheme not in {"redis", "rediss", "unix"}:
        cluster_form = ", redis+cluster://host1:6379,host2:6379" if cluster else ""
        raise ImproperlyConfigured(
            f"{name} {url!r} is not supported; use redis://host:6379/0, rediss://…{cluster_form} or "
            "unix:///path.sock?db=0"
        )
    try:
        redis_db_of(url)
    except ValueError:
        raise ImproperlyConfigured(f"{name} {url!r} has a database number that is not an integer") from None
    return url
