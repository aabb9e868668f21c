import os
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import audit
from billing.models import Account
from governance import checkpoint_export, ledger
from onceonly_site import checkpoint_signing


class Command(BaseCommand):
    help = (
        "Write the signed decision-log and audit-log checkpoints (and with --with-rows every row they cover) to a "
        "JSON file that tools/verify_checkpoints.py verifies offline (docs/operations.md, Signed checkpoints)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="The file to write ('-': standard output).")
        parser.add_argument("--account", help="Account name or id (default: every account).")
        parser.add_argument("--kind", choices=["decisions", "audit", "all"], default="all")
        parser.add_argument(
            "--with-rows", action="store_true", help="Include every decision / audit entry, to recompute the chains."
        )
        parser.add_argument(
            "--checkpoint", action="store_true", help="Write pending checkpoints first, as the beat task would."
        )
        parser.add_argument(
            "--sign-missing",
            action="store_true",
            help="First sign the checkpoints written without a key, with the current key (logs that verify only).",
        )

    def handle(self, *args, out: str, account: str | None, kind: str, with_rows: bool, **options) -> None:
        accounts = list(self._accounts(account))
        kinds = checkpoint_signing.KINDS if kind == "all" else (kind,)
        err = self.stderr
        if checkpoint_signing.current_key() is None:
            err.write(
                "No signing key is configured (ONCEONLY_CHECKPOINT_SIGNING_KEY): new checkpoints are not signed; "
                "generate one with `python manage.py checkpoint_key generate`."
            )
        if options["checkpoint"]:
            for acct in accounts:
                if "decisions" in kinds:
                    while ledger.checkpoint_account(acct.pk) is not None:
                        pass
                if "audit" in kinds:
                    audit.checkpoint_account(acct.pk)
        if options["sign_missing"]:
            try:
                signed = checkpoint_export.sign_missing(accounts, kinds)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            err.write(f"Signed {signed.signed} checkpoint{'s' if signed.signed != 1 else ''} that had no signature.")
            for refusal in signed.refused:
                err.write(f"Not signed, the log fails verification: {refusal}")
        if out == "-":
            summary = checkpoint_export.export(sys.stdout, accounts=accounts, kinds=kinds, with_rows=with_rows)
        else:
            path = Path(out)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with temporary.open("w", encoding="utf-8") as file:
                    summary = checkpoint_export.export(file, accounts=accounts, kinds=kinds, with_rows=with_rows)
                temporary.replace(path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        if summary.unsigned:
            err.write(
                f"{len(summary.unsigned)} checkpoint(s) have no signature, which the verifier rejects (first: "
                f"{summary.unsigned[0]}); configure a key and run with --sign-missing."
            )
        if summary.unknown_keys:
            err.write(
                f"{len(summary.unknown_keys)} checkpoint(s) are signed by a key that is no longer published (first: "
                f"{summary.unknown_keys[0]}); add its public key to ONCEONLY_CHECKPOINT_PUBLIC_KEYS."
            )
        rows = f" and {summary.rows} rows" if with_rows else ""
        where = "standard output" if out == "-" else out
        err.write(f"Exported {summary.checkpoints} checkpoints{rows} of {len(accounts)} account(s) to {where}.")

    def _accounts(self, account: str | None) -> list[Account]:
        if account is None:
            return list(Account.objects.order_by("pk"))
        found = Account.objects.filter(name=account).first()
        if found is None and account.isdigit():
            found = Account.objects.filter(pk=int(account)).first()
        if found is None:
            raise CommandError(f"No account named {account!r}.")
        return [found]
