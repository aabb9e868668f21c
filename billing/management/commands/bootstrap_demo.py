import secrets

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from billing import services
from billing.choices import Role
from billing.models import Account

DEMO_ACCOUNT = "demo"
DEMO_EMAIL = "demo@onceonly.local"


class Command(BaseCommand):
    help = (
        "First start of `make run`: create the demo account (plan agency), an operator login and an API key, "
        "and print them. Does nothing (but say so) when the demo account exists."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url: str, **options) -> None:
        if Account.objects.filter(name=DEMO_ACCOUNT).exists():
            self.stdout.write(
                f"Demo account exists. Log in at {base_url}/login/ as {DEMO_EMAIL} (password printed on first "
                "start; reset it with `.venv/bin/python manage.py create_operator --account demo "
                f"--email {DEMO_EMAIL} --password NEW`). New API key: "
                "`.venv/bin/python manage.py create_api_key --account demo`."
            )
            return
        password = secrets.token_urlsafe(12)
        with transaction.atomic():  # all three or none: a half-made demo would never print its login again
            account, _ = services.account_get_or_create(name=DEMO_ACCOUNT, plan_code="agency")
            services.operator_create(account=account, email=DEMO_EMAIL, password=password, role=Role.OWNER)
            key = services.api_key_create(account=account, label="demo key (make run)")
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    "OnceOnly Server — demo account created (shown once, save it now)",
                    f"  Dashboard : {base_url}/   login {DEMO_EMAIL}   password {password}",
                    f"  API key   : {key.raw}",
                    f'  SDK       : OnceOnly(api_key=KEY, base_url="{base_url}/v1")',
                    "=" * 72,
                    "",
                ]
            )
        )
