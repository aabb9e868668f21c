from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.models import Account
from governance import ledger


class Command(BaseCommand):
    help = "Recompute the decision-log hashes and checkpoints of an account; name the first row that does not match."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, help="Account name.")
        parser.add_argument("--checkpoint", action="store_true", help="Write pending checkpoints first.")

    def handle(self, *args, account: str, checkpoint: bool, **options) -> None:
        acct = Account.objects.filter(name=account).first()
        if acct is None:
            raise CommandError(f"No account named {account!r}.")
        if checkpoint:
            while ledger.checkpoint_account(acct.pk):
                pass
        result = ledger.verify(acct.pk)
        if not result.ok:
            raise CommandError(result.message)
        self.stdout.write(result.message)
