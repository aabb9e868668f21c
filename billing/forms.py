import math
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, UsernameField
from django.core.exceptions import ValidationError

from billing import login_throttle, sso
from billing.choices import ApiKeyScope, Role
from onceonly_site.identifiers import validate_identifier
from onceonly_site.proxies import client_address


class ApiKeyCreateForm(forms.Form):
    label = forms.CharField(
        max_length=100,
        required=False,
        validators=[validate_identifier],
        help_text="What the key is for, e.g. “billing-agent prod”. Shown in this list only.",
    )
    scope = forms.ChoiceField(
        choices=ApiKeyScope.choices,
        initial=ApiKeyScope.AGENT,
        required=False,
        help_text="Admin keys can also approve or deny approval requests — never give one to an agent.",
    )

    def clean_scope(self) -> str:
        return self.cleaned_data.get("scope") or ApiKeyScope.AGENT  # not sent: an agent's key, as before


class AccountSwitchForm(forms.Form):
    account_id = forms.IntegerField(min_value=1)
    next = forms.CharField(required=False, max_length=500)


LOCKED_OUT = (
    "Too many failed sign-in attempts. For your security, sign-in is paused for %(minutes)s minute%(plural)s; try "
    "again then. If you forgot your password, the administrator of this server can set a new one "
    "(manage.py create_operator)."
)

PASSWORD_LOGIN_OFF = "Password sign-in is turned off on this server: sign in with SSO."


if TYPE_CHECKING:
    # What the mixin is mixed into (its cleaned_data, request and the clean() it extends), for the type checker only.
    _AuthenticationFormBase = AuthenticationForm
else:
    _AuthenticationFormBase = object


class LoginLockoutMixin(_AuthenticationFormBase):
    """The failed-login lockout (billing/login_throttle.py) for a Django authentication form: the dashboard's and
    the admin's, so neither login page lets a password be guessed faster than the other."""

    locked_out = False

    def clean(self) -> dict[str, Any]:
        if not sso.password_login_enabled():  # ONCEONLY_PASSWORD_LOGIN=0: single sign-on only (billing/sso.py)
            raise ValidationError(PASSWORD_LOGIN_OFF, code="password_login_disabled")
        username = (self.cleaned_data.get("username") or "").strip().lower()
        address = client_address(self.request) if self.request else ""
        # Counted as a failure before the password is looked at (taken back on success): concurrent guesses cannot
        # all pass the check first. A locked-out attempt is refused unchecked: a correct password does not end the
        # lockout early.
        wait = login_throttle.begin_attempt(username, address)
        if wait:
            self.locked_out = True
            minutes = math.ceil(wait / 60)
            raise ValidationError(
                LOCKED_OUT, code="locked_out", params={"minutes": minutes, "plural": "" if minutes == 1 else "s"}
            )
        cleaned = super().clean()  # a wrong password raises: the attempt stays counted
        login_throttle.record_success(username, address)
        return cleaned


class EmailAuthenticationForm(LoginLockoutMixin, AuthenticationForm):
    """Operators log in with their email address (stored as the username, lower-cased)."""

    username = UsernameField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Please enter a correct email and password. The password is case-sensitive.",
    }

    def clean_username(self) -> str:
        return self.cleaned_data["username"].strip().lower()


class AdminLoginForm(LoginLockoutMixin, AdminAuthenticationForm):
    """/admin/'s login form with the same lockout (set as admin.site.login_form in billing/admin.py)."""


class AccountAdminForm(forms.ModelForm):
    """Django admin's account form: the name is an identifier like anywhere else (onceonly_site/identifiers.py)."""

    name = forms.CharField(max_length=120, validators=[validate_identifier])


class PlanSwitchForm(forms.Form):
    plan = forms.SlugField(max_length=32)


class SettingsForm(forms.Form):
    name = forms.CharField(max_length=120, label="Account name", validators=[validate_identifier])
    strict_mode = forms.BooleanField(
        required=False,
        label="Strict mode",
        help_text="Refuse calls to unregistered tools (404 tool_not_found) instead of permit-only decisions.",
    )
    email_notifications_enabled = forms.BooleanField(required=False, label="Email notifications")
    tool_error_notifications_enabled = forms.BooleanField(required=False, label="Tool error notifications")
    run_failure_notifications_enabled = forms.BooleanField(required=False, label="Run failure notifications")


class MemberAddForm(forms.Form):
    email = forms.EmailField(label="Email", validators=[validate_identifier])
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
