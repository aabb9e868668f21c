from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import services
from billing.choices import ApiKeyScope
from billing.models import Plan
from onceonly_site.identifiers import validate_identifier


class Command(BaseCommand):
    help = "Create an API key (and the account if missing). Prints only the raw key on stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, help="Account name; created if missing.")
        parser.add_argument("--plan", help="Set the account's plan (free, starter, pro, agency or another code).")
        parser.add_argument("--label", default="", help="A label for the key.")
        parser.add_argument(
            "--scope",
            choices=ApiKeyScope.values,
            default=ApiKeyScope.AGENT,
            help="agent (default): an agent's key; admin: may also approve or deny approval requests, loosen an "
            "agent's guards, resume paused runs and release contained agents — never give one to an agent.",
        )

    def handle(self, *args, account: str, plan: str | None, label: str, scope: str, **options) -> None:
        if plan and not Plan.objects.filter(code=plan).exists():
            codes = ", ".join(Plan.objects.values_list("code", flat=True))
            raise CommandError(f"Unknown plan {plan!r}; known plans: {codes}.")
        try:
            validate_identifier(label)  # before the account is created, so a bad label creates nothing
            acct, created = services.account_get_or_create(name=account, plan_code=plan)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if created:
            self.stderr.write(f"Created account {acct.name!r} on plan {acct.plan.code}.")
        new = services.api_key_create(account=acct, label=label, scope=scope)
        self.stdout.write(new.raw)
