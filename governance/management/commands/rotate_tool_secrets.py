from django.core.management.base import BaseCommand

from governance import secrets
from governance.models import Approval, NotificationChannel, Tool

# Every column encrypted with ONCEONLY_FIELD_ENCRYPTION_KEY (docs/security.md).
ENCRYPTED = (
    (Tool, "secret_encrypted", "tool secret"),
    (NotificationChannel, "secret_encrypted", "channel secret"),
    (NotificationChannel, "url_encrypted", "channel URL"),
    (Approval, "args_encrypted", "approval's args preview"),
)


class Command(BaseCommand):
    help = (
        "Re-encrypt every tool secret, notification channel secret and URL, and approval args preview with the "
        "newest ONCEONLY_FIELD_ENCRYPTION_KEY (the first in the list)."
    )

    def handle(self, *args, **options) -> None:
        for model, column, noun in ENCRYPTED:
            count = 0
            for pk, token in model.objects.exclude(**{column: ""}).values_list("pk", column).iterator():
                model.objects.filter(pk=pk, **{column: token}).update(**{column: secrets.rotate(token)})
                count += 1
            self.stdout.write(f"Re-encrypted {count} {noun}{'s' if count != 1 else ''} with the newest key.")
