"""API-key authentication for ``/v1`` (``Authorization: Bearer <key>``).

Hot path: after warm-up a request costs no database query. A key's SHA-256 maps to a small JSON entry in Redis
(``oo:apikey:<sha256>``) and, for at most ``ONCEONLY_API_KEY_LOCAL_CACHE_SECONDS`` (< 1 s), in this process's
memory. Revocation overwrites the Redis entry with a tombstone, so every process refuses the key within a second.

Race: a process that read the key from the database just before a revocation committed must not put a stale
"valid" entry back over the tombstone. Entries loaded from the database are therefore written with SET NX
(``cache_fill``) and only revocation overwrites (``cache_forget``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import redis
from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from billing import counters
from onceonly_site.api import InvalidApiKey, MissingBearer
from onceonly_site.redis_client import get_redis

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 256
_TOMBSTONE = b"-"
_NEGATIVE_TTL = 10  # seconds an unknown key is remembered as unknown


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """The numbers of the caller's plan the hot paths need, cached with the key (no query per request)."""

    code: str
    default_ttl: int
    max_ttl: int
    make_limit: int
    ai_limit: int
    has_governance: bool = False
    has_allowed_tools: bool = False
    has_kill_switch: bool = False
    rate_per_second: int = 10
    rate_burst: int = 50
    tools_limit: int = 0
    dispatch_slots: int | None = None  # None: ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT


_PLAN_FIELDS = {
    "code": "account__plan__code",
    "default_ttl": "account__plan__default_ttl_seconds",
    "max_ttl": "account__plan__max_ttl_seconds",
    "make_limit": "account__plan__make_monthly_limit",
    "ai_limit": "account__plan__ai_monthly_limit",
    "has_governance": "account__plan__has_governance",
    "has_allowed_tools": "account__plan__has_allowed_tools",
    "has_kill_switch": "account__plan__has_kill_switch",
    "rate_per_second": "account__plan__rate_limit_per_second",
    "rate_burst": "account__plan__rate_limit_burst",
    "tools_limit": "account__plan__tools_limit",
    "dispatch_slots": "account__plan__dispatch_slots",
}


@dataclass(frozen=True, slots=True)
class ApiPrincipal:
    """Who is calling: ``request.user`` and ``request.auth`` of every authenticated ``/v1`` request.

    Plan changes reach it through ``unforget`` (billing.services.account_set_plan / plan_changed).
    """

    key_id: int
    account_id: int
    key_preview: str
    plan: PlanLimits
    is_authenticated: ClassVar[bool] = True


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _redis_key(digest: str) -> str:
    return f"oo:apikey:{digest}"


# digest -> (expires_at_monotonic, principal or None)
_local: dict[str, tuple[float, ApiPrincipal | None]] = {}
_local_lock = threading.Lock()
# key_id -> monotonic time this process last wrote last_used_at
_touched: dict[int, float] = {}


def clear_local_cache() -> None:
    with _local_lock:
        _local.clear()
        _touched.clear()


def _load_from_db(digest: str) -> ApiPrincipal | None:
    from billing.models import ApiKey

    row = (
        ApiKey.objects.filter(key_hash=digest, revoked_at__isnull=True, account__is_active=True)
        .values("id", "account_id", "prefix", "last4", *_PLAN_FIELDS.values())
        .first()
    )
    if row is None:
        return None
    return ApiPrincipal(
        key_id=row["id"],
        account_id=row["account_id"],
        key_preview=f"{row['prefix']}…{row['last4']}",
        plan=PlanLimits(**{name: row[column] for name, column in _PLAN_FIELDS.items()}),
    )


def plan_limits_for(account_id: int) -> PlanLimits:
    """The plan numbers of an account, for work done outside a request (keyed runs in a worker)."""
    from billing.models import Account

    row = Account.objects.filter(pk=account_id).values(*(c.removeprefix("account__") for c in _PLAN_FIELDS.values()))
    values = row.get()
    return PlanLimits(**{name: values[column.removeprefix("account__")] for name, column in _PLAN_FIELDS.items()})


def _encode(principal: ApiPrincipal) -> bytes:
    plan = principal.plan
    return json.dumps(
        {
            "k": principal.key_id,
            "a": principal.account_id,
            "p": principal.key_preview,
            "plan": [getattr(plan, name) for name in _PLAN_FIELDS],
        }
    ).encode()


def _decode(raw: bytes) -> ApiPrincipal | None:
    if raw == _TOMBSTONE:
        return None
    data = json.loads(raw)
    return ApiPrincipal(key_id=data["k"], account_id=data["a"], key_preview=data["p"], plan=PlanLimits(*data["plan"]))


def resolve(raw_key: str) -> ApiPrincipal | None:
    """The principal for a raw key, or None when the key is unknown, revoked or its account inactive."""
    digest = hash_key(raw_key)
    now = time.monotonic()
    cached = _local.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]

    principal: ApiPrincipal | None
    client = get_redis()
    redis_up = True
    try:
        stored = client.get(_redis_key(digest))
    except redis.RedisError:
        stored = None  # Redis down: the database still answers (slower, but correct)
        redis_up = False
    if isinstance(stored, bytes):  # the client does not decode responses: a hit is bytes, a miss None
        principal = _decode(stored)
    else:
        principal = _load_from_db(digest)
        if redis_up:
            value, ttl = (
                (_encode(principal), settings.ONCEONLY_API_KEY_REDIS_CACHE_SECONDS)
                if principal
                else (_TOMBSTONE, _NEGATIVE_TTL)
            )
            try:
                client.set(_redis_key(digest), value, ex=ttl, nx=True)
            except redis.RedisError:
                pass
    with _local_lock:
        if len(_local) > 10_000:
            _local.clear()
        _local[digest] = (now + settings.ONCEONLY_API_KEY_LOCAL_CACHE_SECONDS, principal)
    return principal


def forget(key_hash: str) -> None:
    """Make every process refuse this key from now on (called after a revocation commits).

    If Redis is unreachable the revocation still stands in the database, which every process consults while
    Redis is down; only an entry cached in Redis before the outage could outlive it (its TTL bounds that).
    """
    with _local_lock:
        _local.pop(key_hash, None)
    try:
        get_redis().set(_redis_key(key_hash), _TOMBSTONE, ex=settings.ONCEONLY_API_KEY_REDIS_CACHE_SECONDS)
    except redis.RedisError:
        logger.error("could not write the revocation tombstone for an API key to Redis", exc_info=True)


def unforget(key_hashes: list[str]) -> None:
    """Drop cached verdicts so the database decides again (after an account is reactivated)."""
    with _local_lock:
        for key_hash in key_hashes:
            _local.pop(key_hash, None)
    if key_hashes:
        try:
            get_redis().delete(*[_redis_key(h) for h in key_hashes])
        except redis.RedisError:
            logger.error("could not drop cached API-key entries from Redis", exc_info=True)


def _touch(principal: ApiPrincipal) -> None:
    """Write last_used_at at most once per ONCEONLY_API_KEY_TOUCH_SECONDS per key, across processes."""
    from billing.models import ApiKey

    now = time.monotonic()
    interval = settings.ONCEONLY_API_KEY_TOUCH_SECONDS
    if now - _touched.get(principal.key_id, -1e9) < interval:
        return
    _touched[principal.key_id] = now
    try:
        first = get_redis().set(f"oo:apikey-touch:{principal.key_id}", 1, ex=interval, nx=True)
    except redis.RedisError:
        first = True
    if first:
        ApiKey.objects.filter(pk=principal.key_id).update(last_used_at=timezone.now())


def authenticate_header_value(header: str) -> ApiPrincipal:
    """The principal of an ``Authorization: Bearer <key>`` header, or MissingBearer (401) / InvalidApiKey (403)."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingBearer()
    if len(token) > MAX_KEY_LENGTH or not token.isascii():
        raise InvalidApiKey()
    principal = resolve(token)
    if principal is None:
        raise InvalidApiKey()
    _touch(principal)
    counters.count_request(principal.account_id)
    return principal


def principal(request: Request) -> ApiPrincipal:
    """The caller of an API request, as ``ApiKeyAuthentication`` put it in ``request.auth`` (DRF's stubs type that
    ``Token | Any``). A request no key authenticated is refused as one without a key (401)."""
    auth = request.auth
    if not isinstance(auth, ApiPrincipal):
        raise MissingBearer()
    return auth


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ApiPrincipal, ApiPrincipal]:
        principal = authenticate_header_value(request.META.get("HTTP_AUTHORIZATION", ""))
        return principal, principal

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
