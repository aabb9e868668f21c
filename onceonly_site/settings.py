"""Settings, read from the environment (docs/architecture.md §6).

Every value goes through a typed helper in ``env.py``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from onceonly_site import checkpoint_signing, embedded_redis, sso_settings
from onceonly_site.env import (
    celery_url_from_redis,
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    is_cluster_url,
    sqlite_database,
    validate_redis_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ONCEONLY_VAR_DIR") or BASE_DIR / "var").resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _dev_secret_key() -> str:
    # In DEBUG a random key is generated once and kept under var/, so sessions survive restarts of `make run`.
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`, or set DEBUG=1 for development."
        )
    SECRET_KEY = _dev_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind a TLS-terminating proxy set ONCEONLY_HTTPS=1: secure cookies, HSTS, redirect to https.
HTTPS = env_bool("ONCEONLY_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("ONCEONLY_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # pages carry the token (forms, and hx-headers for htmx); no script reads the cookie
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "billing",
    "idempotency",
    "governance",
]

MIDDLEWARE = [
    "onceonly_site.clock.RequestClockMiddleware",  # first: a deadline counts from the arrival (onceonly_site/clock.py)
    "onceonly_site.runner.RunnerMiddleware",  # one request runs Python at a time per process (onceonly_site/runner.py)
    "onceonly_site.middleware.RequestIdMiddleware",
    "onceonly_site.middleware.SecurityHeadersMiddleware",
    "onceonly_site.middleware.ControlCharactersMiddleware",  # before any view: docs/security.md
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "onceonly_site.urls"
WSGI_APPLICATION = "onceonly_site.wsgi.application"
ASGI_APPLICATION = "onceonly_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "billing.context_processors.current_account",
                "onceonly_site.navigation.main_nav",
            ],
            # usd, num, seconds, pct in every template without {% load %} (onceonly_site/formatting.py).
            "builtins": ["onceonly_site.formatting"],
        },
    }
]

# --- Database ---------------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL") or ""
DATABASES = {
    "default": database_from_url(DATABASE_URL) if DATABASE_URL else sqlite_database(VAR_DIR / "onceonly.sqlite3")
}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: locks, leases, counters, cache and the Celery broker all use this one server (or a cluster, and a
# single Redis for the broker: docs/operations.md §"Redis Cluster") -------------------------------------------
REDIS_URL = env_str("REDIS_URL") or ""
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    REDIS_URL = embedded_redis.default_url(VAR_DIR)
    if env_bool("ONCEONLY_EMBEDDED_REDIS_AUTOSTART", True):
        embedded_redis.ensure_running(VAR_DIR)
validate_redis_url(REDIS_URL)


def redis_dependent_settings(url: str, broker_url: str | None = None) -> dict[str, object]:
    """Everything derived from REDIS_URL, so the test settings can re-derive it for their own database.

    The Celery broker is REDIS_URL unless CELERY_BROKER_URL (``broker_url``) names another single Redis; a cluster
    cannot be the broker (Kombu's Redis transport runs multi-key commands on keys of its own naming)."""
    broker = (env_str("CELERY_BROKER_URL") or "") if broker_url is None else broker_url
    cluster = is_cluster_url(url)
    if cluster and not broker:
        raise ImproperlyConfigured(
            f"REDIS_URL {url!r} names a Redis Cluster, which cannot be the Celery broker: set CELERY_BROKER_URL "
            "to a single Redis (redis://host:6379/0), docs/operations.md"
        )
    if broker:
        validate_redis_url(broker, name="CELERY_BROKER_URL", cluster=False)
    client = "onceonly_site.redis_client.ClusterCacheClient" if cluster else "django_redis.client.DefaultClient"
    return {
        "CACHES": {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                # A list: django-redis would split a cluster URL's commas into a primary and its replicas.
                "LOCATION": [url],
                "KEY_PREFIX": "oo:cache",
                "OPTIONS": {"CLIENT_CLASS": client},
            }
        },
        "BROKER_REDIS_URL": broker or url,  # the broker's queues, as redis-py reads them (the metrics' gauge)
        "CELERY_BROKER_URL": celery_url_from_redis(broker or url),
        "CELERY_RESULT_BACKEND": None,
    }


globals().update(redis_dependent_settings(REDIS_URL))
BROKER_REDIS_URL: str  # set by the line above (declared for the type checker)

# --- Celery ----------------------------------------------------------------------------------------------
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Auth and the operator UI -----------------------------------------------------------------------------
LOGIN_URL = "billing:login"
LOGIN_REDIRECT_URL = "billing:overview"
LOGOUT_REDIRECT_URL = "billing:login"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 14 * 24 * 3600, minimum=300)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Single sign-on with OpenID Connect, off unless ONCEONLY_OIDC_ISSUER is set, and ONCEONLY_PASSWORD_LOGIN: the
# ONCEONLY_OIDC_*, OIDC_* (mozilla-django-oidc's) and AUTHENTICATION_BACKENDS settings (onceonly_site/sso_settings.py).
globals().update(sso_settings.from_env())

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing STATIC_ROOT before collectstatic ran
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or env_bool("ONCEONLY_STATIC_FROM_FINDERS", False)
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Without collectstatic (dev, tests) whitenoise serves straight from the app/static folders.
WHITENOISE_USE_FINDERS = DEBUG or env_bool("ONCEONLY_STATIC_FROM_FINDERS", False)

# --- API --------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["billing.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["onceonly_site.api.JSONParser"],
    "EXCEPTION_HANDLER": "onceonly_site.api.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["billing.ratelimit.ApiKeyRateThrottle"],
    # drf-spectacular's, plus the error answers of the contract and closed request bodies (onceonly_site/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "onceonly_site.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "OnceOnly Server API",
    "DESCRIPTION": (
        "Self-hosted control plane for AI agents, wire-compatible with onceonly-sdk 3.0.5. "
        'Authenticate with `Authorization: Bearer <api key>`. Errors are `{"detail": …}`; '
        "validation errors are 422."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One enum component for the lease statuses the lease, status and result answers share.
    "ENUM_NAME_OVERRIDES": {"LeaseStatusEnum": "idempotency.api.LEASE_STATUSES"},
}

# --- OnceOnly ---------------------------------------------------------------------------------------------
# How long a web process trusts its in-memory copy of an API key before asking Redis again. This bounds how
# long a revoked key keeps working in another process (the contract is: within one second).
ONCEONLY_API_KEY_LOCAL_CACHE_SECONDS = env_float("ONCEONLY_API_KEY_LOCAL_CACHE_SECONDS", 0.9, minimum=0)
# How long the key -> account mapping is kept in Redis (revocation overwrites it at once).
ONCEONLY_API_KEY_REDIS_CACHE_SECONDS = env_int("ONCEONLY_API_KEY_REDIS_CACHE_SECONDS", 300, minimum=1)
# last_used_at is written at most this often per key.
ONCEONLY_API_KEY_TOUCH_SECONDS = env_int("ONCEONLY_API_KEY_TOUCH_SECONDS", 60, minimum=1)
# Per-process request counters are added to the database at most this often per account.
ONCEONLY_COUNTER_FLUSH_SECONDS = env_float("ONCEONLY_COUNTER_FLUSH_SECONDS", 5.0, minimum=0)
# GET /metrics (Prometheus): off unless a token is set; scrapers send it as a bearer token.
ONCEONLY_METRICS_TOKEN = env_str("ONCEONLY_METRICS_TOKEN") or ""
ONCEONLY_METRICS_CACHE_SECONDS = env_int("ONCEONLY_METRICS_CACHE_SECONDS", 10, minimum=0)
# OpenTelemetry export of governed calls and runs over OTLP/HTTP: off unless the standard endpoint variable is set
# (the SDK reads the other OTEL_* variables itself). docs/operations.md §"OpenTelemetry export"
OTEL_EXPORTER_OTLP_ENDPOINT = (env_str("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME") or "onceonly-server"
# The dashboard's public address (https://onceonly.example.com): links that leave the server — an approval's URL in
# the API's answer and in notifications — are absolute with it. Unset, they are paths (docs/approvals.md).
ONCEONLY_PUBLIC_URL = (env_str("ONCEONLY_PUBLIC_URL") or "").strip().rstrip("/")
# The MCP gateway (docs/mcp.md) refuses a browser's request whose Origin is another site's (DNS rebinding), unless it
# is listed here (comma-separated, e.g. https://inspector.example.com). Clients outside a browser send no Origin.
ONCEONLY_MCP_ALLOWED_ORIGINS = env_list("ONCEONLY_MCP_ALLOWED_ORIGINS", [])
# At most this many approval requests open per agent: a further call needing a new one is blocked without a request
# (docs/approvals.md), so an agent looping over distinct args cannot flood the approvers.
ONCEONLY_APPROVALS_OPEN_PER_AGENT = env_int("ONCEONLY_APPROVALS_OPEN_PER_AGENT", 100, minimum=1)
# Dashboard sign-in: this many wrong passwords for one email (ten times as many from one address) lock sign-in
# for the window (billing/login_throttle.py).
ONCEONLY_LOGIN_MAX_FAILURES = env_int("ONCEONLY_LOGIN_MAX_FAILURES", 5, minimum=1)
ONCEONLY_LOGIN_LOCKOUT_SECONDS = env_int("ONCEONLY_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Reverse proxies in front of the web processes that append to X-Forwarded-For (onceonly_site/proxies.py).
ONCEONLY_TRUSTED_PROXIES = env_int("ONCEONLY_TRUSTED_PROXIES", 0, minimum=0, maximum=10)
# Completed/failed leases stay final, and expired lock records are kept, this long; the sweeper deletes them after.
ONCEONLY_RETENTION_DAYS = env_int("ONCEONLY_RETENTION_DAYS", 7, minimum=1)
# The hourly verification of the decision and audit logs re-verifies the whole of each log over this many days, a
# slice per run, besides what was written since its last run (docs/operations.md §"Decision-log tamper evidence").
ONCEONLY_VERIFY_SWEEP_DAYS = env_int("ONCEONLY_VERIFY_SWEEP_DAYS", 7, minimum=1, maximum=3650)
# Days of the decision log kept on PostgreSQL (whole days dropped by beat: governance/partitions.py); 0 keeps every
# decision. At least 7 when set: the governed call reads back up to two days, and the verification a day past the
# retention horizon (docs/operations.md §"Decision-log partitions").
ONCEONLY_DECISION_RETENTION_DAYS = env_int("ONCEONLY_DECISION_RETENTION_DAYS", 0, minimum=0, maximum=36500)
if 0 < ONCEONLY_DECISION_RETENTION_DAYS < 7:
    raise ImproperlyConfigured("ONCEONLY_DECISION_RETENTION_DAYS must be 0 (keep every decision) or at least 7")
# A governed call's dispatch (all attempts) ends within this many seconds of the request's arrival (X-Request-Start
# from the proxy, else when this process began reading it); the SDK's client timeout is 5 s.
ONCEONLY_DISPATCH_DEADLINE_SECONDS = env_float("ONCEONLY_DISPATCH_DEADLINE_SECONDS", 4.0, minimum=0.5)
# Bulkheads (docs/operations.md §"Slow tools and bulkheads"): dispatches in flight at once, per account (the plan's
# dispatch_slots wins when set), per registered tool, and per web process. WEB_THREADS is the gunicorn threads per
# process (deploy/web.sh); a process lets at most half of them wait on tools and a quarter wait on keyed runs, so a
# quarter always serves everything else.
ONCEONLY_WEB_THREADS = env_int("WEB_THREADS", 16, minimum=1, maximum=1000)
# Requests of one web process that run Python at once (onceonly_site/runner.py): the others wait their turn, and
# requests waiting on a tool or a keyed run step aside. 0: no limit (every thread runs, contending for the GIL).
ONCEONLY_WEB_RUNNERS_PER_PROCESS = env_int("ONCEONLY_WEB_RUNNERS_PER_PROCESS", 1, minimum=0)
ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT = env_int("ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT", 8, minimum=1)
ONCEONLY_DISPATCH_SLOTS_PER_TOOL = env_int("ONCEONLY_DISPATCH_SLOTS_PER_TOOL", 4, minimum=1)
ONCEONLY_DISPATCH_SLOTS_PER_PROCESS = env_int(
    "ONCEONLY_DISPATCH_SLOTS_PER_PROCESS", max(1, ONCEONLY_WEB_THREADS // 2), minimum=1
)
# /v1/ai/status, /v1/ai/result and the key form of /v1/ai/run wait up to this long for an unfinished keyed run
# (woken by Redis, not by polling); at most ONCEONLY_RUN_WAITERS_PER_PROCESS requests of a process wait at once.
ONCEONLY_RUN_WAIT_SECONDS = min(4.0, env_float("ONCEONLY_RUN_WAIT_SECONDS", 2.0, minimum=0))  # under the SDK's 5 s
ONCEONLY_RUN_WAITERS_PER_PROCESS = env_int(
    "ONCEONLY_RUN_WAITERS_PER_PROCESS", max(1, ONCEONLY_WEB_THREADS // 4), minimum=0
)
# Keyed runs (docs/architecture.md §3.3): a worker's claim on a run lasts this long and is renewed every third of
# it; a worker that dies is replaced once its claim lapses (the sweeper wakes another one every
# ONCEONLY_RUN_SWEEP_SECONDS).
ONCEONLY_RUN_CLAIM_SECONDS = env_float("ONCEONLY_RUN_CLAIM_SECONDS", 30.0, minimum=0.5)
ONCEONLY_RUN_SWEEP_SECONDS = env_float("ONCEONLY_RUN_SWEEP_SECONDS", 10.0, minimum=0.2)
# A run not finished this long after it was queued fails with error_code timeout.
ONCEONLY_RUN_TIMEOUT_SECONDS = env_int("ONCEONLY_RUN_TIMEOUT_SECONDS", 900, minimum=1)
# A keyed run paused at a per-run cap waits this long for Raise & resume, then fails run_cap_exceeded.
ONCEONLY_RUN_PAUSE_SECONDS = env_int("ONCEONLY_RUN_PAUSE_SECONDS", 86400, minimum=1)
# Python modules that register the project's own job handlers (@idempotency.jobs.handler) when the app starts.
ONCEONLY_JOB_HANDLER_MODULES = env_list("ONCEONLY_JOB_HANDLER_MODULES", [])
ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = env_bool("ONCEONLY_ALLOW_PRIVATE_TOOL_URLS", False)
# Tools on public addresses must use https:// unless this is on (private ones, when allowed, may use http://).
ONCEONLY_ALLOW_HTTP_TOOL_URLS = env_bool("ONCEONLY_ALLOW_HTTP_TOOL_URLS", False)
ONCEONLY_FIELD_ENCRYPTION_KEY = env_str("ONCEONLY_FIELD_ENCRYPTION_KEY") or ""
# Signed checkpoints (docs/operations.md §"Signed checkpoints"): the Ed25519 key that signs the decision-log and
# audit-log checkpoints, and the public keys of earlier signing keys, still published for their signatures. Unset:
# checkpoints are not signed — except in DEBUG, where a key generated once is kept under var/ (as the secret key is).
ONCEONLY_CHECKPOINT_SIGNING_KEY = (env_str("ONCEONLY_CHECKPOINT_SIGNING_KEY") or "").strip()
if not ONCEONLY_CHECKPOINT_SIGNING_KEY and DEBUG:
    ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.dev_key(VAR_DIR / "dev-checkpoint-signing-key")
ONCEONLY_CHECKPOINT_PUBLIC_KEYS = env_list("ONCEONLY_CHECKPOINT_PUBLIC_KEYS", [])
# A malformed key stops every process at start-up, not the beat task at its first checkpoint.
checkpoint_signing.validate(ONCEONLY_CHECKPOINT_SIGNING_KEY, ONCEONLY_CHECKPOINT_PUBLIC_KEYS)

# Paid plans through Stripe (docs/billing.md). Unset: nothing of it is visible, plans are switched freely.
STRIPE_SECRET_KEY = (env_str("STRIPE_SECRET_KEY") or "").strip()
STRIPE_WEBHOOK_SECRET = (env_str("STRIPE_WEBHOOK_SECRET") or "").strip()
if bool(STRIPE_SECRET_KEY) != bool(STRIPE_WEBHOOK_SECRET):
    raise ImproperlyConfigured("Set both STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET, or neither (docs/billing.md).")
STRIPE_ENABLED = bool(STRIPE_SECRET_KEY)
# plan code -> Stripe price id, e.g. "starter=price_123,pro=price_456" (else the plan rows' stripe_price_id).
STRIPE_PRICE_IDS: dict[str, str] = {}
for _pair in env_list("STRIPE_PRICE_IDS", []):
    _code, _, _price = _pair.partition("=")
    if not _code.strip() or not _price.strip():
        raise ImproperlyConfigured(f"STRIPE_PRICE_IDS: {_pair!r} is not plan=price_id")
    STRIPE_PRICE_IDS[_code.strip()] = _price.strip()
# Another API address, e.g. stripe-mock (http://localhost:12111) for local testing; default: Stripe's own.
STRIPE_API_BASE = env_str("STRIPE_API_BASE") or ""

# Email (notification digests). Default: printed to the console (development); set EMAIL_HOST for SMTP.
EMAIL_HOST = env_str("EMAIL_HOST") or ""
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "onceonly@localhost"
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO") or "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "onceonly_site.middleware.RequestIdLogFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.server": {"level": "WARNING"}},
}
