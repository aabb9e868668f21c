from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import audit
from billing.models import Account


class Command(BaseCommand):
    help = "Recompute the audit-log hash chain of an account; name the first entry that does not match."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, help="Account name.")

    def handle(self, *args, account: str, **options) -> None:
        acct = Account.objects.filter(name=account).first()
        if acct is None:
            raise CommandError(f"No account named {account!r}.")
        result = audit.verify(acct.pk)
        if not result.ok:
            raise CommandError(result.message)
        self.stdout.write(result.message)
