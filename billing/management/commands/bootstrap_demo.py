import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from billing import services
from billing.choices import Role
from billing.models import Account
from onceonly_site.devstack import DEMO_ACCOUNT, DEMO_EMAIL, demo_commands, shown_path, write_credentials


class Command(BaseCommand):
    help = (
        "First start of `make run`: create the demo account (plan agency), an operator login and an API key, "
        "and print them (and save them in --credentials-file, mode 0600). When the demo account exists, only say "
        "where they were saved and how to reset them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--credentials-file", type=Path, help="Save the new login and key here (mode 0600).")

    def handle(self, *args, base_url: str, credentials_file: Path | None, **options) -> None:
        # The `make manage` commands that work in another terminal (manage.py alone lacks make run's environment).
        reset, new_key = demo_commands(settings.VAR_DIR)
        if Account.objects.filter(name=DEMO_ACCOUNT).exists():
            saved = ""
            if credentials_file is not None:
                where = shown_path(credentials_file.resolve())
                saved = (
                    f" and saved in {where}" if credentials_file.exists() else f" and saved in {where} (since deleted)"
                )
            self.stdout.write(
                "\n".join(
                    [
                        f"Demo account exists. Log in at {base_url}/login/ as {DEMO_EMAIL}; its password and first "
                        f"API key were printed on the first start{saved}.",
                        "In another terminal, in this checkout: reset the password (replace NEW), create another key:",
                        f"  {reset}",
                        f"  {new_key}",
                    ]
                )
            )
            return
        password = secrets.token_urlsafe(12)
        with transaction.atomic():  # all three or none: a half-made demo would never print its login again
            account, _ = services.account_get_or_create(name=DEMO_ACCOUNT, plan_code="agency")
            services.operator_create(account=account, email=DEMO_EMAIL, password=password, role=Role.OWNER)
            key = services.api_key_create(account=account, label="demo key (make run)")
        if credentials_file is not None:
            write_credentials(
                credentials_file, base_url=base_url, password=password, api_key=key.raw, var_dir=settings.VAR_DIR
            )
            saved = f"  Saved in  : {shown_path(credentials_file.resolve())} (mode 0600)"
        else:
            saved = "  (shown once, save it now)"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    "OnceOnly Server — demo account created",
                    f"  Dashboard : {base_url}/   login {DEMO_EMAIL}   password {password}",
                    f"  API key   : {key.raw}",
                    f'  SDK       : OnceOnly(api_key=KEY, base_url="{base_url}/v1")',
                    saved,
                    "=" * 72,
                    "",
                ]
            )
        )
