"""Settings of single sign-on with OpenID Connect, read from the environment. Off unless ONCEONLY_OIDC_ISSUER is set:
docs/operations.md §"Single sign-on (OpenID Connect)".

``oidc_settings`` turns the values into Django settings — ours (``ONCEONLY_OIDC_*``) and those mozilla-django-oidc
reads (``OIDC_*``) — and refuses a configuration that would be unsafe or lock every operator out, at start-up, with a
message naming the variable. The provider's endpoints are not settings: they are discovered from the issuer's
``/.well-known/openid-configuration`` when first needed (billing/sso.py), so a provider that is down does not stop the
server from starting (password sign-in, when on, still works).
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from onceonly_site.env import env_bool, env_int, env_list, env_str

ROLES = ("owner", "admin", "viewer")  # billing.choices.Role (shared code imports no app: tests/test_layering.py)
PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"
OIDC_BACKEND = "billing.sso.OidcBackend"


def parse_role_map(raw: list[str]) -> dict[str, str]:
    """``["onceonly-admins:admin", "onceonly-viewers:viewer"]`` -> ``{"onceonly-admins": "admin", ...}``. The claim
    value is everything before the last colon (group names may contain colons, roles do not)."""
    role_map: dict[str, str] = {}
    for pair in raw:
        value, sep, role = pair.rpartition(":")
        value, role = value.strip(), role.strip().lower()
        if not sep or not value or role not in ROLES:
            raise ImproperlyConfigured(
                f"ONCEONLY_OIDC_ROLE_MAP: {pair!r} is not claim-value:role with a role of {', '.join(ROLES)}"
            )
        role_map[value] = role
    return role_map


def oidc_settings(
    *,
    issuer: str,
    client_id: str = "",
    client_secret: str = "",
    allowed_domains: list[str] | None = None,
    role_claim: str = "groups",
    role_map: dict[str, str] | None = None,
    account: str = "",
    create_users: bool = False,
    require_verified_email: bool = True,
    scopes: str = "openid email profile",
    password_login: bool = True,
    timeout: int = 10,
) -> dict[str, object]:
    """The Django settings of one SSO configuration (the tests build theirs with it too)."""
    issuer = issuer.strip().rstrip("/")
    role_map = dict(role_map or {})
    domains = [domain.strip().lower().lstrip("@") for domain in allowed_domains or [] if domain.strip()]
    enabled = bool(issuer)
    if not password_login and not enabled:
        raise ImproperlyConfigured("ONCEONLY_PASSWORD_LOGIN=0 needs single sign-on: set ONCEONLY_OIDC_ISSUER too.")
    if enabled:
        if not issuer.startswith(("https://", "http://")):
            raise ImproperlyConfigured(f"ONCEONLY_OIDC_ISSUER must be an http(s) URL, got {issuer!r}")
        if not client_id or not client_secret:
            raise ImproperlyConfigured("Single sign-on needs ONCEONLY_OIDC_CLIENT_ID and ONCEONLY_OIDC_CLIENT_SECRET.")
        if (create_users or role_map) and not account:
            raise ImproperlyConfigured(
                "ONCEONLY_OIDC_CREATE_USERS and ONCEONLY_OIDC_ROLE_MAP need ONCEONLY_OIDC_ACCOUNT: the account whose "
                "members single sign-on creates and whose roles it maps."
            )
        if create_users and not domains:
            # Anyone with an account at a public provider could otherwise make themselves a member.
            raise ImproperlyConfigured("ONCEONLY_OIDC_CREATE_USERS=1 needs ONCEONLY_OIDC_ALLOWED_DOMAINS.")
        if "openid" not in scopes.split() or "email" not in scopes.split():
            raise ImproperlyConfigured(f"ONCEONLY_OIDC_SCOPES must include openid and email, got {scopes!r}")
    return {
        "ONCEONLY_OIDC_ENABLED": enabled,
        "ONCEONLY_OIDC_ISSUER": issuer,
        "ONCEONLY_OIDC_ALLOWED_DOMAINS": domains,
        "ONCEONLY_OIDC_ROLE_CLAIM": role_claim.strip(),
        "ONCEONLY_OIDC_ROLE_MAP": role_map,
        "ONCEONLY_OIDC_ACCOUNT": account.strip(),
        "ONCEONLY_OIDC_CREATE_USERS": create_users,
        "ONCEONLY_OIDC_REQUIRE_VERIFIED_EMAIL": require_verified_email,
        "ONCEONLY_PASSWORD_LOGIN": password_login,
        "AUTHENTICATION_BACKENDS": [PASSWORD_BACKEND, OIDC_BACKEND] if enabled else [PASSWORD_BACKEND],
        # mozilla-django-oidc's own settings (its endpoints come from discovery: billing/sso.py).
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": client_secret,
        "OIDC_RP_SIGN_ALGO": "RS256",
        "OIDC_RP_SCOPES": scopes,
        "OIDC_USE_PKCE": True,
        "OIDC_USE_NONCE": True,
        "OIDC_TOKEN_USE_BASIC_AUTH": True,  # client_secret_basic: the default every provider supports
        "OIDC_STORE_ID_TOKEN": True,  # the id_token_hint of the provider's logout
        "OIDC_CREATE_USER": False,  # just-in-time membership is ours (billing/sso.py), off by default
        "OIDC_TIMEOUT": timeout,
        "OIDC_AUTHENTICATION_CALLBACK_URL": "billing:oidc-callback",
        "OIDC_REDIRECT_REQUIRE_HTTPS": False,  # a relative ?next= is the usual case; hosts are still checked
    }


def from_env() -> dict[str, object]:
    return oidc_settings(
        issuer=env_str("ONCEONLY_OIDC_ISSUER") or "",
        client_id=(env_str("ONCEONLY_OIDC_CLIENT_ID") or "").strip(),
        client_secret=(env_str("ONCEONLY_OIDC_CLIENT_SECRET") or "").strip(),
        allowed_domains=env_list("ONCEONLY_OIDC_ALLOWED_DOMAINS", []),
        role_claim=env_str("ONCEONLY_OIDC_ROLE_CLAIM") or "groups",
        role_map=parse_role_map(env_list("ONCEONLY_OIDC_ROLE_MAP", [])),
        account=env_str("ONCEONLY_OIDC_ACCOUNT") or "",
        create_users=env_bool("ONCEONLY_OIDC_CREATE_USERS", False),
        require_verified_email=env_bool("ONCEONLY_OIDC_REQUIRE_VERIFIED_EMAIL", True),
        scopes=(env_str("ONCEONLY_OIDC_SCOPES") or "openid email profile").strip(),
        password_login=env_bool("ONCEONLY_PASSWORD_LOGIN", True),
        timeout=env_int("ONCEONLY_OIDC_TIMEOUT_SECONDS", 10, minimum=1, maximum=60),
    )
