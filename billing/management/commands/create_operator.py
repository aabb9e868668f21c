from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import services
from billing.choices import Role
from billing.models import Account, Membership


class Command(BaseCommand):
    help = "Create an operator login for an account (or reset its password, and change its role with --role)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, help="Account name; created (Free plan) if missing.")
        parser.add_argument("--email", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument(
            "--role",
            default=None,
            choices=Role.values,
            help="Default: owner for a new member; an existing member keeps its role.",
        )

    def handle(self, *args, account: str, email: str, password: str, role: str, **options) -> None:
        try:
            acct = Account.objects.filter(name=account).first()
            if acct is None:
                acct, _ = services.account_get_or_create(name=account)
            user = services.operator_create(account=acct, email=email, password=password, role=role)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        role = Membership.objects.get(user=user, account=acct).role
        self.stdout.write(f"Operator {user.get_username()} is {role} of {acct.name!r}.")
