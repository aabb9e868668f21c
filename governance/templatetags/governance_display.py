"""``{% policy_table policy %}``, ``{% audit_data entry.data %}`` and ``{% json_diff lines %}``: readable objects on the
dashboard (governance/display.py), never a Python repr; ``{% legal_hold %}``: the retention and legal-hold card."""

from __future__ import annotations

from typing import Any

from django import template

from billing.choices import Role
from billing.models import Account
from governance import display, holds

register = template.Library()


@register.inclusion_tag("governance/_policy_table.html")
def policy_table(policy: dict[str, Any] | None, caption: str = "") -> dict[str, Any]:
    """The policy as a table (tool lists, caps with units, per-tool caps, pricing rules) with YAML and JSON views."""
    return {"p": display.policy_view(policy), "caption": caption}


@register.inclusion_tag("governance/_audit_data.html")
def audit_data(data: Any) -> dict[str, Any]:
    return {"view": display.audit_view(data)}


@register.inclusion_tag("governance/_diff.html")
def json_diff(lines: list[str]) -> dict[str, Any]:
    """A diff from display.diff_lines, coloured line by line (the policy page's version comparison)."""
    return {"rows": display.diff_rows(lines)}


@register.inclusion_tag("governance/_legal_hold.html")
def legal_hold(obj: Any, membership: Any, action: str, noun: str) -> dict[str, Any]:
    """The legal-hold card of the account (Settings) or an agent (its page): the state for everyone, the form that
    sets or clears it for owners (governance/hold_views.py); with the account's retention in days."""
    account = membership.account
    return {
        "hold": holds.state(obj),
        "is_owner": membership.role == Role.OWNER,
        "action": action,
        "noun": noun,
        "retention_days": holds.effective_retention_days(account),
        "is_account": isinstance(obj, Account),
    }
