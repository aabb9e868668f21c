"""``manage.py policies export`` and ``manage.py policies apply FILE`` (docs/policies-as-code.md).

Exit status: 0 done (or a dry run without problems); 1 the file has problems, printed as ``FILE:LINE: agent: field:
message`` (nothing was applied); 2 a usage error (an unknown account, a file that cannot be read, bad arguments)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.models import Account
from governance import policy_code

FILE_PROBLEMS, USAGE = 1, 2
APPLY_ATTEMPTS = 3
SYMBOLS = {policy_code.CREATE: "+", policy_code.CHANGE: "~", policy_code.UNCHANGED: "="}


def _account(value: str | None) -> Account:
    """An account by name, or by id when it is a number no account is named; the only account when none is given."""
    if value is None:
        accounts = list(Account.objects.order_by("pk")[:2])
        if len(accounts) == 1:
            return accounts[0]
        raise CommandError(
            "Name the account with --account NAME_OR_ID (there are several)." if accounts else "There is no account.",
            returncode=USAGE,
        )
    account = Account.objects.filter(name=value).first()
    if account is None and value.isdigit():
        account = Account.objects.filter(pk=int(value)).first()
    if account is None:
        raise CommandError(f"No account named {value!r} (nor with that id).", returncode=USAGE)
    return account


class Command(BaseCommand):
    help = "Export every agent's policy as a YAML file, or apply such a file (atomically; --dry-run: the plan only)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{export,apply}")
        export = actions.add_parser("export", help="Write every agent's policy as YAML (stdout, or --output).")
        export.add_argument("--account", help="Account name or id (default: the only account).")
        export.add_argument("--output", "-o", help="Write to this file instead of stdout.")
        apply = actions.add_parser("apply", help="Apply a policies file: all of it, or nothing.")
        apply.add_argument("file", help="The YAML file (- for stdin).")
        apply.add_argument("--account", help="Account name or id (default: the only account).")
        apply.add_argument("--dry-run", action="store_true", help="Print what would change; change nothing.")
        apply.add_argument("--diff", action="store_true", help="Also print each agent's line diff (as JSON).")
        apply.add_argument(
            "--actor", help="Who applies it, as versions and the audit log record it (default: cli <OS user>)."
        )
        apply.add_argument(
            "--name", help="The file's name in messages and in each version's source (default: its base name)."
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        account = _account(options.get("account"))
        if action == "export":
            self._export(account, options.get("output"))
        else:
            self._apply(account, options)

    def _export(self, account: Account, output: str | None) -> None:
        text, agents = policy_code.export_counted(account.pk)
        if output in (None, "-"):
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}.", returncode=USAGE) from None
        self.stderr.write(f"Wrote {output}: the policies of {agents:,} agent{'s' if agents != 1 else ''}.")

    def _read(self, path: str) -> str:
        try:
            data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.", returncode=USAGE) from None
        return policy_code.decode(data)

    def _apply(self, account: Account, options: dict[str, Any]) -> None:
        path = options["file"]
        name = options.get("name") or ("stdin" if path == "-" else os.path.basename(path))
        actor = options.get("actor") or f"cli {getpass.getuser()}"
        try:
            text = self._read(path)
        except policy_code.PlanHasErrors as refused:  # not UTF-8
            for problem in refused.problems:
                self.stderr.write(problem.text(name))
            raise CommandError("Nothing was applied.", returncode=FILE_PROBLEMS) from None
        for _ in range(APPLY_ATTEMPTS):
            plan = policy_code.plan(account.pk, text, name)
            if plan.errors or options["dry_run"]:
                self._report(plan, options["diff"], applied=None)
                if plan.errors:
                    count = len(plan.errors)
                    raise CommandError(
                        f"{count:,} problem{'s' if count != 1 else ''} in {name}; nothing was applied.",
                        returncode=FILE_PROBLEMS,
                    )
                return
            try:
                applied = policy_code.apply(account.pk, plan, actor)
            except policy_code.PlanStale:
                continue  # an agent's policy changed between the plan and its locks: plan again
            self._report(plan, options["diff"], applied=applied)
            return
        raise CommandError("The file's agents' policies kept changing; nothing was applied. Retry.")

    def _report(self, plan: policy_code.Plan, diff: bool, applied: policy_code.Applied | None) -> None:
        """The plan, agent by agent (what changes, in words), then its problems; or what the apply made."""
        for agent in plan.agents:
            if agent.action == policy_code.UNCHANGED:
                continue
            version = applied.versions.get(agent.agent_id) if applied else agent.new_version
            was = f"v{agent.version} → " if agent.version else ""
            self.stdout.write(
                f"{SYMBOLS[agent.action]} {agent.agent_id} (line {agent.line}): {agent.action} {was}v{version}"
            )
            for change in agent.changes:
                self.stdout.write(f"    {change['text']}")
            for warning in agent.warnings:
                self.stdout.write(f"    warning: {warning}")
            if diff:
                for line in agent.diff:
                    self.stdout.write(f"      {line}")
        for problem in plan.errors:
            self.stderr.write(problem.text(plan.filename))
        if plan.errors:
            return
        if applied is None:
            self.stdout.write(f"{plan.filename} (dry run): {plan.summary()}")
        else:
            self.stdout.write(f"Applied {plan.filename}: {plan.summary(done=True)}")
