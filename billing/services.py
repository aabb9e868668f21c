"""Writes of the billing app: accounts, operators, API keys, notification settings — each audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import audit, auth
from billing.choices import ApiKeyScope, Role
from billing.models import Account, ApiKey, AuditEntry, Membership, Plan
from onceonly_site.identifiers import validate_identifier

if TYPE_CHECKING:
    from django.contrib.auth.models import User

API_KEY_PREFIX = "once_live_"
NOTIFICATION_FIELDS = (
    "email_notifications_enabled",
    "tool_error_notifications_enabled",
    "run_failure_notifications_enabled",
)


def _actor_label(actor: User | None) -> str:
    return actor.get_username() if actor is not None else "system"


def audit_record(
    *,
    account: Account,
    action: str,
    actor: User | None = None,
    actor_label: str | None = None,
    object_type: str = "",
    object_id: str | int = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """One audit entry, chained to the account's previous one (billing.audit) in the caller's transaction."""
    fields = {
        # A snapshot for people to read: cut to the columns' widths rather than fail the audited action.
        "actor_label": (actor_label or _actor_label(actor))[:200],
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id)[:512],
        "data": audit.normalised(data),
    }
    with transaction.atomic():
        audit.lock_chain(account.pk)
        prev = audit.previous_hash(account.pk)
        created_at = timezone.now()
        row_hash = audit.entry_hash(account.pk, prev, created_at, fields)
        return AuditEntry.objects.create(
            account=account, actor=actor, created_at=created_at, prev_hash=prev, row_hash=row_hash, **fields
        )


def _name_too_long(name: str) -> bool:
    # A CharField always has a max_length; Field's type allows None.
    max_length = Account._meta.get_field("name").max_length
    return max_length is not None and len(name) > max_length


def account_get_or_create(*, name: str, plan_code: str | None = None) -> tuple[Account, bool]:
    """The account called ``name``, created on the Free plan (or ``plan_code``) if missing."""
    validate_identifier(name)  # before strip(), which would drop a trailing U+0085 silently
    name = name.strip()
    if not name:
        raise ValidationError("An account needs a name.")
    if _name_too_long(name):
        raise ValidationError("An account name has at most 120 characters.")
    plan = Plan.objects.get(code=plan_code) if plan_code else None
    account = Account.objects.filter(name=name).first()
    if account is None:
        try:
            with transaction.atomic():
                account = Account.objects.create(name=name, plan=plan or Plan.objects.get(code="free"))
                audit_record(
                    account=account,
                    action="billing.account.created",
                    object_type="account",
                    object_id=account.pk,
                    data={"plan": account.plan.code},
                )
            return account, True
        except IntegrityError:
            account = Account.objects.get(name=name)  # created concurrently: take theirs
    if plan is not None and account.plan_id != plan.pk:
        account_set_plan(account=account, plan=plan)
    return account, False


def account_set_plan(
    *,
    account: Account,
    plan: Plan,
    actor: User | None = None,
    actor_label: str | None = None,
    reason: str = "",
) -> None:
    """Move an account to ``plan`` (audited). Its API keys carry the new limits and entitlements from the next
    request in every process; the month's usage stays, measured against the new quotas."""
    old = account.plan.code
    with transaction.atomic():
        account.plan = plan
        account.save(update_fields=["plan"])
        audit_record(
            account=account,
            actor=actor,
            actor_label=actor_label,
            action="billing.account.plan_changed",
            object_type="account",
            object_id=account.pk,
            data={"from": old, "to": plan.code, **({"reason": reason} if reason else {})},
        )
        _refresh_cached_keys([account.pk])


def plan_changed(*, plan: Plan) -> None:
    """A plan row was edited (admin): its accounts' API calls see the new limits within a second."""
    with transaction.atomic():
        _refresh_cached_keys(list(plan.accounts.values_list("pk", flat=True)))


def _refresh_cached_keys(account_ids: list[int]) -> None:
    """After commit, drop the cached principals (which carry plan limits) of these accounts' keys."""
    hashes = list(ApiKey.objects.filter(account_id__in=account_ids).values_list("key_hash", flat=True))
    transaction.on_commit(lambda: auth.unforget(hashes))


def _forget_all(key_hashes: list[str]) -> None:
    for key_hash in key_hashes:
        auth.forget(key_hash)


def account_set_active(*, account: Account, is_active: bool, actor: User | None = None) -> bool:
    """Deactivate (every key refused within a second) or reactivate an account. False if nothing changed."""
    with transaction.atomic():
        changed = Account.objects.filter(pk=account.pk, is_active=not is_active).update(is_active=is_active)
        if changed:
            action = "billing.account.reactivated" if is_active else "billing.account.deactivated"
            audit_record(account=account, actor=actor, action=action, object_type="account", object_id=account.pk)
            hashes = list(ApiKey.objects.filter(account=account).values_list("key_hash", flat=True))
            if is_active:
                transaction.on_commit(lambda: auth.unforget(hashes))
            else:
                transaction.on_commit(lambda: _forget_all(hashes))
    account.is_active = is_active
    return bool(changed)


@dataclass(frozen=True)
class NewApiKey:
    api_key: ApiKey
    raw: str  # shown to the user exactly once, never stored


def api_key_create(
    *, account: Account, label: str = "", actor: User | None = None, scope: str = ApiKeyScope.AGENT
) -> NewApiKey:
    """Create a key ``once_live_`` + 32 random bytes (url-safe base64). Only its SHA-256 is stored. ``scope``: an
    agent's key, or an admin key that may also decide approvals (billing.choices.ApiKeyScope)."""
    validate_identifier(label)
    if scope not in ApiKeyScope.values:
        raise ValidationError(f"Unknown key scope {scope!r}; valid: {', '.join(ApiKeyScope.values)}.")
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            account=account,
            label=label.strip()[:100],
            prefix=raw[: len(API_KEY_PREFIX) + 4],
            last4=raw[-4:],
            key_hash=auth.hash_key(raw),
            scope=scope,
            created_by=actor,
        )
        audit_record(
            account=account,
            actor=actor,
            action="billing.api_key.created",
            object_type="api_key",
            object_id=api_key.pk,
            data={"label": api_key.label, "key": api_key.preview, "scope": api_key.scope},
        )
    return NewApiKey(api_key=api_key, raw=raw)


def api_key_revoke(*, api_key: ApiKey, actor: User | None = None) -> bool:
    """Revoke a key; every process refuses it within a second. Returns False if it was already revoked."""
    now = timezone.now()
    with transaction.atomic():
        # Conditional update: two operators revoking at once write one audit entry, not two.
        changed = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=actor)
        if changed:
            audit_record(
                account=api_key.account,
                actor=actor,
                action="billing.api_key.revoked",
                object_type="api_key",
                object_id=api_key.pk,
                data={"key": api_key.preview},
            )
            key_hash = api_key.key_hash
            transaction.on_commit(lambda: auth.forget(key_hash))
    if changed:
        api_key.revoked_at, api_key.revoked_by = now, actor
    return bool(changed)


def operator_create(
    *,
    account: Account,
    email: str,
    password: str,
    role: str | None = Role.OWNER,
    actor: User | None = None,
) -> User:
    """Create (or update the password and role of) an operator login for ``account``. ``role=None`` keeps an
    existing member's role (a password reset must not promote anyone) and makes a new member an owner."""
    validate_identifier(email)
    email = email.strip().lower()
    if "@" not in email:
        raise ValidationError("Enter a valid email address.")
    if role is not None and role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}; use one of {', '.join(Role.values)}.")
    user_model = get_user_model()
    password_validation.validate_password(password, user_model(username=email, email=email))
    with transaction.atomic():
        user, _ = user_model.objects.get_or_create(username=email, defaults={"email": email})
        user.set_password(password)
        user.save(update_fields=["password"])
        membership, created = Membership.objects.get_or_create(
            user=user, account=account, defaults={"role": role or Role.OWNER}
        )
        role = role or membership.role
        if not created and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        audit_record(
            account=account,
            actor=actor,
            action="billing.operator.saved",
            object_type="user",
            object_id=user.pk,
            data={"email": email, "role": role},
        )
    return user


def notifications_update(*, account: Account, changes: dict[str, bool], actor_label: str) -> Account:
    fields = [name for name in NOTIFICATION_FIELDS if name in changes]
    with transaction.atomic():
        for name in fields:
            setattr(account, name, bool(changes[name]))
        account.save(update_fields=fields)
        audit_record(
            account=account,
            actor_label=actor_label,
            action="billing.notifications.updated",
            object_type="account",
            object_id=account.pk,
            data={name: changes[name] for name in fields},
        )
    return account


def account_update_settings(
    *, account: Account, name: str, strict_mode: bool, notifications: dict[str, bool], actor: User
) -> list[str]:
    """The Settings page: account name, strict mode, notification switches. Returns the changed field names."""
    validate_identifier(name)
    name = name.strip()
    if not name or _name_too_long(name):
        raise ValidationError("An account name has 1 to 120 characters.")
    if name != account.name and Account.objects.filter(name=name).exclude(pk=account.pk).exists():
        raise ValidationError("Another account already has this name.")
    before = {
        "name": account.name,
        "strict_mode": account.strict_mode,
        **{f: getattr(account, f) for f in NOTIFICATION_FIELDS},
    }
    after = {"name": name, "strict_mode": strict_mode, **notifications}
    changed = [field for field, value in after.items() if before[field] != value]
    if not changed:
        return []
    with transaction.atomic():
        for field in changed:
            setattr(account, field, after[field])
        try:
            with transaction.atomic():
                account.save(update_fields=changed)
        except IntegrityError:
            raise ValidationError("Another account already has this name.") from None
        audit_record(
            account=account,
            actor=actor,
            action="billing.account.settings_changed",
            object_type="account",
            object_id=account.pk,
            data={"before": {f: before[f] for f in changed}, "after": {f: after[f] for f in changed}},
        )
    return changed


class LastOwner(ValidationError):
    """An account always keeps at least one owner."""


def membership_add(*, account: Account, email: str, role: str, actor: User) -> tuple[Membership, str]:
    """Add a login to the account (creating the user with a one-time password if new). Returns (membership,
    password or "" when the user already existed and keeps their password)."""
    validate_identifier(email)
    email = email.strip().lower()
    if "@" not in email or len(email) > 150:
        raise ValidationError("Enter a valid email address.")
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    user_model = get_user_model()
    password = ""
    with transaction.atomic():
        user = user_model.objects.filter(username=email).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = user_model.objects.create_user(username=email, email=email, password=password)
        membership, created = Membership.objects.get_or_create(user=user, account=account, defaults={"role": role})
        if not created:
            raise ValidationError(f"{email} is already a member of this account.")
        audit_record(
            account=account,
            actor=actor,
            action="billing.member.added",
            object_type="user",
            object_id=user.pk,
            data={"email": email, "role": role},
        )
    return membership, password


def _owners_left(account: Account, excluding: Membership) -> int:
    return (
        Membership.objects.select_for_update().filter(account=account, role=Role.OWNER).exclude(pk=excluding.pk).count()
    )


def membership_set_role(*, membership: Membership, role: str, actor: User) -> None:
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    with transaction.atomic():
        if membership.role == Role.OWNER and role != Role.OWNER and not _owners_left(membership.account, membership):
            raise LastOwner("The last owner cannot be demoted: make someone else owner first.")
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit_record(
            account=membership.account,
            actor=actor,
            action="billing.member.role_changed",
            object_type="user",
            object_id=membership.user_id,
            data={"email": membership.user.get_username(), "before": before, "after": role},
        )


def membership_remove(*, membership: Membership, actor: User) -> None:
    with transaction.atomic():
        if membership.role == Role.OWNER and not _owners_left(membership.account, membership):
            raise LastOwner("The last owner cannot be removed.")
        audit_record(
            account=membership.account,
            actor=actor,
            action="billing.member.removed",
            object_type="user",
            object_id=membership.user_id,
            data={"email": membership.user.get_username(), "role": membership.role},
        )
        membership.delete()
