"""Single sign-on with OpenID Connect (docs/operations.md §"Single sign-on (OpenID Connect)").

mozilla-django-oidc runs the protocol: the authorization-code flow with PKCE, state and nonce, the token exchange and
the ID token's signature against the provider's keys. This module adds what decides who gets in: the email must be
verified by the provider and of an allowed domain, and belong to an existing operator — unless just-in-time creation
is on, when a new operator joins ONCEONLY_OIDC_ACCOUNT with the role its claim maps to. A mapped role is applied at
each sign-in. A refusal names its reason on a page of its own (billing/sso_views.py) and creates nothing.

The provider's endpoints come from its discovery document, fetched when first needed and kept for an hour per process.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from billing.choices import Role
from billing.models import Account, Membership
from billing.services import account_get_or_create, audit_record

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

METADATA_TTL_SECONDS = 3600
ROLE_RANK = {Role.VIEWER: 0, Role.ADMIN: 1, Role.OWNER: 2}
ACTOR_LABEL = "sso"  # the audit entries' actor when single sign-on itself changed something


@dataclass(frozen=True)
class SsoConfig:
    enabled: bool
    issuer: str
    allowed_domains: tuple[str, ...]
    role_claim: str
    role_map: dict[str, str]
    account: str
    create_users: bool
    require_verified_email: bool


def config() -> SsoConfig:
    """The settings of onceonly_site/sso_settings.py, typed (read per call: tests change them)."""
    return SsoConfig(
        enabled=getattr(settings, "ONCEONLY_OIDC_ENABLED", False),
        issuer=getattr(settings, "ONCEONLY_OIDC_ISSUER", ""),
        allowed_domains=tuple(getattr(settings, "ONCEONLY_OIDC_ALLOWED_DOMAINS", ())),
        role_claim=getattr(settings, "ONCEONLY_OIDC_ROLE_CLAIM", "groups"),
        role_map=dict(getattr(settings, "ONCEONLY_OIDC_ROLE_MAP", {})),
        account=getattr(settings, "ONCEONLY_OIDC_ACCOUNT", ""),
        create_users=getattr(settings, "ONCEONLY_OIDC_CREATE_USERS", False),
        require_verified_email=getattr(settings, "ONCEONLY_OIDC_REQUIRE_VERIFIED_EMAIL", True),
    )


def oidc_setting(name: str) -> Any:
    """One of mozilla-django-oidc's ``OIDC_*`` settings (set by onceonly_site/sso_settings.py through globals(), so
    the type checker does not know them)."""
    return getattr(settings, name)


def password_login_enabled() -> bool:
    """ONCEONLY_PASSWORD_LOGIN: off, the dashboard's and /admin/'s password forms refuse every attempt."""
    return bool(getattr(settings, "ONCEONLY_PASSWORD_LOGIN", True))


# --- Discovery -----------------------------------------------------------------------------------------------------
class ProviderUnavailable(Exception):
    """The provider's discovery document could not be fetched or is not the issuer's."""


_metadata: dict[str, tuple[float, dict[str, Any]]] = {}
_metadata_lock = threading.Lock()


def provider_metadata() -> dict[str, Any]:
    """The issuer's ``/.well-known/openid-configuration``, cached per process for an hour."""
    issuer = config().issuer
    now = time.monotonic()
    cached = _metadata.get(issuer)
    if cached is not None and cached[0] > now:
        return cached[1]
    with _metadata_lock:
        url = f"{issuer}/.well-known/openid-configuration"
        try:
            response = httpx.get(url, timeout=oidc_setting("OIDC_TIMEOUT"), follow_redirects=False)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("OIDC discovery failed: %s: %s", url, exc)
            raise ProviderUnavailable(str(exc)) from exc
        if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
            # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer it was fetched from.
            raise ProviderUnavailable(f"{url} names another issuer")
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(k)]
        if missing:
            raise ProviderUnavailable(f"{url} lacks {', '.join(missing)}")
        _metadata[issuer] = (now + METADATA_TTL_SECONDS, document)
        return document


def forget_metadata() -> None:
    _metadata.clear()


def end_session_url(id_token: str, post_logout_redirect_uri: str) -> str | None:
    """RP-initiated logout at the provider (OpenID Connect RP-Initiated Logout 1.0), when it has an
    end_session_endpoint; None otherwise (or when it cannot be reached: the local sign-out still happens)."""
    try:
        endpoint = provider_metadata().get("end_session_endpoint")
    except ProviderUnavailable:
        return None
    if not endpoint:
        return None
    query = urlencode(
        {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": post_logout_redirect_uri,
            "client_id": oidc_setting("OIDC_RP_CLIENT_ID"),
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


# --- Who gets in ---------------------------------------------------------------------------------------------------
class Refused(Exception):
    """A sign-in the rules refuse; the message is shown to the person signing in."""


def _claim_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return []


def mapped_role(claims: dict[str, Any], cfg: SsoConfig) -> str | None:
    """The highest role any value of the role claim maps to, or None."""
    roles = [cfg.role_map[v] for v in _claim_values(claims.get(cfg.role_claim)) if v in cfg.role_map]
    return max(roles, key=lambda role: ROLE_RANK[Role(role)]) if roles else None


def checked_email(claims: dict[str, Any], cfg: SsoConfig) -> str:
    email = str(claims.get("email") or "").strip().lower()
    if "@" not in email:
        raise Refused("The sign-in provider sent no email address; this server identifies operators by it.")
    if cfg.require_verified_email and claims.get("email_verified") not in (True, "true"):
        raise Refused(f"The sign-in provider has not verified {email}; verify it there, then sign in again.")
    domain = email.rsplit("@", 1)[1]
    if cfg.allowed_domains and domain not in cfg.allowed_domains:
        raise Refused(f"Addresses at {domain} may not sign in to this server.")
    return email


def _sync_role(membership: Membership, role: str, claims_label: str) -> None:
    if membership.role == role:
        return
    if membership.role == Role.OWNER:
        owners_left = (
            Membership.objects.select_for_update()
            .filter(account=membership.account, role=Role.OWNER)
            .exclude(pk=membership.pk)
            .count()
        )
        if not owners_left:
            logger.warning("SSO did not demote the last owner of account %s", membership.account_id)
            return
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        account=membership.account,
        actor_label=ACTOR_LABEL,
        action="billing.member.role_changed",
        object_type="user",
        object_id=membership.user_id,
        data={"email": claims_label, "before": before, "after": role, "source": "sso"},
    )


def sign_in(claims: dict[str, Any]) -> User:
    """The operator these (verified) claims sign in, after applying the mapped role and, when on, creating the
    membership; raises Refused. Every account the operator is a member of records the sign-in."""
    cfg = config()
    email = checked_email(claims, cfg)
    role = mapped_role(claims, cfg)
    user_model = get_user_model()
    with transaction.atomic():
        users = list(user_model.objects.filter(username=email)) or list(user_model.objects.filter(email__iexact=email))
        if len(users) > 1:
            raise Refused(f"More than one operator has the address {email}; ask the administrator to merge them.")
        user = users[0] if users else None
        if user is not None and not user.is_active:
            raise Refused(f"The operator {email} is deactivated on this server.")
        account = Account.objects.filter(name=cfg.account).first() if cfg.account else None
        membership = Membership.objects.filter(user=user, account=account).first() if user and account else None
        created = False
        if user is None and not cfg.create_users:
            raise Refused(
                f"{email} is not an operator of this server. An owner can add you on the Team page; then sign in again."
            )
        if membership is None and cfg.create_users and (role is not None or not cfg.role_map):
            user, created = _create_member(email, role or Role.VIEWER, cfg, user)
        elif membership is not None and role is not None:
            _sync_role(Membership.objects.select_for_update().get(pk=membership.pk), role, email)
        if user is None:
            raise Refused(f"None of your {cfg.role_claim} gives a role on this server.")
        memberships = list(Membership.objects.filter(user=user).select_related("account"))
        if not memberships:
            raise Refused(f"{email} is not a member of any account on this server.")
        for membership in memberships:
            audit_record(
                account=membership.account,
                actor=user,
                action="billing.operator.sso_signed_in",
                object_type="user",
                object_id=user.pk,
                data={"email": email, "issuer": cfg.issuer, "subject": str(claims.get("sub", ""))[:255]},
            )
    if created:
        logger.info("SSO created the membership of %s in account %s", email, cfg.account)
    return user


def _create_member(email: str, role: str, cfg: SsoConfig, user: User | None) -> tuple[User, bool]:
    """Just-in-time: the operator (without a password: they sign in through the provider) and their membership of
    ONCEONLY_OIDC_ACCOUNT (created on the Free plan if missing), audited."""
    account, _ = account_get_or_create(name=cfg.account)
    if user is None:
        user = get_user_model().objects.create_user(username=email, email=email, password=None)
    try:
        with transaction.atomic():
            Membership.objects.create(user=user, account=account, role=role)
    except IntegrityError:
        return user, False  # a concurrent sign-in of the same operator created it
    audit_record(
        account=account,
        actor_label=ACTOR_LABEL,
        action="billing.member.added",
        object_type="user",
        object_id=user.pk,
        data={"email": email, "role": role, "source": "sso"},
    )
    return user, True


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with endpoints from discovery and the rules of ``sign_in``.

    Django builds a backend for every request of a signed-in operator (``get_user``): nothing here reaches the
    provider until ``authenticate`` runs, from the callback view only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = oidc_setting("OIDC_RP_CLIENT_ID")
        self.OIDC_RP_CLIENT_SECRET = oidc_setting("OIDC_RP_CLIENT_SECRET")
        self.OIDC_RP_SIGN_ALGO = oidc_setting("OIDC_RP_SIGN_ALGO")
        self.OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        if request is None or "nonce" not in kwargs or not config().enabled:
            return None  # a password sign-in, or anything but the callback
        try:
            metadata = provider_metadata()
        except ProviderUnavailable:
            request.sso_refusal = "The sign-in provider cannot be reached; try again later."  # type: ignore[attr-defined]
            return None
        self.OIDC_OP_TOKEN_ENDPOINT = metadata["token_endpoint"]
        self.OIDC_OP_USER_ENDPOINT = metadata.get("userinfo_endpoint")
        self.OIDC_OP_JWKS_ENDPOINT = metadata["jwks_uri"]
        try:
            user: User | None = super().authenticate(request, **kwargs)
            return user
        except (requests.RequestException, SuspiciousOperation, OSError, ValueError) as exc:
            logger.warning("OIDC sign-in failed: %s", exc)
            request.sso_refusal = "The sign-in provider's answer could not be used; try again."  # type: ignore[attr-defined]
            return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The library's checks (signature, expiry, nonce), and the two it leaves out: the token is the issuer's,
        and for this client (an ID token the provider issued to another of its clients is refused)."""
        payload: dict[str, Any] = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if str(payload.get("iss", "")).rstrip("/") != config().issuer or self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("the ID token was not issued by the configured issuer for this client")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The ID token's claims, completed by the userinfo endpoint's when there is one (same subject only)."""
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            userinfo = super().get_userinfo(access_token, id_token, payload)
            if userinfo.get("sub") != payload.get("sub"):
                raise Refused("The sign-in provider's userinfo names another subject than its ID token.")
            claims.update(userinfo)
        return claims

    def store_tokens(self, access_token: str, id_token: str) -> None:
        # Kept on the request: the callback stores it in the session after sign-in (which may flush the session).
        self.request.sso_id_token = id_token

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User | None:
        try:
            return sign_in(self.get_userinfo(access_token, id_token, payload))
        except Refused as refusal:
            logger.info("SSO sign-in refused: %s", refusal)
            self.request.sso_refusal = str(refusal)
            return None

    def get_user(self, user_id: int) -> User | None:
        return ModelBackend.get_user(self, user_id)  # ModelBackend's: a deactivated operator's session ends
