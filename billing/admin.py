from django.contrib import admin

from billing import services
from billing.forms import AccountAdminForm, AdminLoginForm
from billing.models import Account, ApiKey, AuditEntry, Membership, Plan

admin.site.login_form = AdminLoginForm  # the failed-login lockout on /admin/ too


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "code",
        "name",
        "make_monthly_limit",
        "ai_monthly_limit",
        "default_ttl_seconds",
        "max_ttl_seconds",
        "tools_limit",
        "has_governance",
        "rate_limit_per_second",
    ]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        services.plan_changed(plan=obj)  # accounts on this plan see the new limits within a second


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountAdminForm  # refuses control and bidi characters in the name
    list_display = ["name", "plan", "is_active", "strict_mode", "created_at"]
    list_filter = ["plan", "is_active"]
    search_fields = ["name"]
    # Activation goes through the service (audit + API-key cache invalidation), via the actions below.
    readonly_fields = ["is_active", "requests_total_all_time", "blocked_total_all_time", "created_at"]
    actions = ["deactivate", "reactivate"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # deactivate instead: that reaches every process's key cache and keeps the audit trail

    @admin.action(description="Deactivate: refuse all of the account's API keys")
    def deactivate(self, request, queryset) -> None:
        for account in queryset:
            services.account_set_active(account=account, is_active=False, actor=request.user)

    @admin.action(description="Reactivate")
    def reactivate(self, request, queryset) -> None:
        for account in queryset:
            services.account_set_active(account=account, is_active=True, actor=request.user)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "account", "role"]
    list_filter = ["role"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The hash is useless to a human and the raw key is never stored: show the preview only, and no edits —
    # keys are created and revoked through the dashboard so that both are audited.
    list_display = ["preview", "account", "label", "created_at", "last_used_at", "revoked_at"]
    exclude = ["key_hash"]
    readonly_fields = [
        "account",
        "label",
        "scope",
        "prefix",
        "last4",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
        "revoked_by",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: revocation is audited and reaches every process's key cache


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "account", "actor_label", "action", "object_type", "object_id"]
    list_filter = ["action"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    # Written by the services only: an audit trail that superusers could add to or prune would prove nothing.
    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # accounts are not deleted either (deactivated), so an entry never goes
