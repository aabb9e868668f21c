from django.core.management.base import BaseCommand

from governance import secrets
from governance.models import Tool


class Command(BaseCommand):
    help = "Re-encrypt every tool secret with the newest ONCEONLY_FIELD_ENCRYPTION_KEY (the first in the list)."

    def handle(self, *args, **options) -> None:
        count = 0
        for tool in Tool.objects.exclude(secret_encrypted="").only("pk", "secret_encrypted").iterator():
            Tool.objects.filter(pk=tool.pk).update(secret_encrypted=secrets.rotate(tool.secret_encrypted))
            count += 1
        self.stdout.write(f"Re-encrypted {count} tool secret{'s' if count != 1 else ''} with the newest key.")
