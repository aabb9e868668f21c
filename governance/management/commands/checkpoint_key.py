import json

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count

from billing.models import AuditCheckpoint
from governance.models import DecisionCheckpoint
from onceonly_site import checkpoint_signing


class Command(BaseCommand):
    help = (
        "Checkpoint signing keys (docs/operations.md, Signed checkpoints): `generate` prints a new Ed25519 key for "
        "ONCEONLY_CHECKPOINT_SIGNING_KEY; `list` shows the published keys and which keys signed stored checkpoints."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("generate", help="Print a new signing key and its public key (nothing is stored).")
        listing = actions.add_parser("list", help="The published public keys, and the keys stored checkpoints name.")
        listing.add_argument("--json", action="store_true", help="Print the published keys as the well-known URL.")

    def handle(self, *args, action: str, **options) -> None:
        if action == "generate":
            key = checkpoint_signing.generate()
            self.stdout.write(
                "\n".join(
                    [
                        "# The private key: keep it in your secrets store, apart from the database and its backups.",
                        f"ONCEONLY_CHECKPOINT_SIGNING_KEY={checkpoint_signing.private_text(key)}",
                        "# Its public key (published at /.well-known/onceonly-checkpoint-keys.json) and key id. When",
                        "# it is retired, keep the public key in ONCEONLY_CHECKPOINT_PUBLIC_KEYS.",
                        f"# public key: {key.x}",
                        f"# key id:     {key.kid}",
                    ]
                )
            )
            return
        if options["json"]:
            self.stdout.write(json.dumps(checkpoint_signing.public_jwks(), indent=2))
            return
        current, published = checkpoint_signing.keyring()
        used: dict[str, int] = {}
        for model in (DecisionCheckpoint, AuditCheckpoint):
            for row in model.objects.exclude(key_id="").values("key_id").annotate(n=Count("pk")):
                used[row["key_id"]] = used.get(row["key_id"], 0) + row["n"]
        unsigned = sum(model.objects.filter(key_id="").count() for model in (DecisionCheckpoint, AuditCheckpoint))
        if current is None:
            self.stdout.write("No signing key is configured (ONCEONLY_CHECKPOINT_SIGNING_KEY).")
        for x in published:
            kid = checkpoint_signing.key_id(x)
            role = "current" if current is not None and kid == current.kid else "retired"
            count = used.pop(kid, 0)
            self.stdout.write(f"{kid}  {role:<8} x={x}  signed {count} checkpoint{'s' if count != 1 else ''}")
        for kid, count in sorted(used.items()):
            self.stdout.write(
                f"{kid}  UNPUBLISHED: signed {count} checkpoints; add its public key to ONCEONLY_CHECKPOINT_PUBLIC_KEYS"
            )
        if unsigned:
            self.stdout.write(f"{unsigned} checkpoints have no signature (export_checkpoints --sign-missing).")
