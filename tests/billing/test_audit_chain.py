"""The operator audit log is hash-chained per account: an edited, deleted or inserted entry is named."""

import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from billing import audit
from billing.models import AuditEntry
from billing.services import audit_record


@pytest.fixture(autouse=True)
def empty_logs(account_a, account_b):
    AuditEntry.objects.all().delete()  # the persona fixtures audit their own setup: start each log empty


def write(account, n):
    return [
        audit_record(account=account, action="test.change", object_id=i, data={"n": i, "t": (1, 2)}) for i in range(n)
    ]


def verify_cmd(name="Acme"):
    out = io.StringIO()
    call_command("verify_audit_log", "--account", name, stdout=out)
    return out.getvalue()


def test_entries_chain_per_account_and_verify(account_a, account_b):
    first = write(account_a, 3)
    write(account_b, 2)
    assert first[0].prev_hash == audit.GENESIS and first[1].prev_hash == first[0].row_hash
    assert "3 audit entries verified." in verify_cmd()
    assert audit.verify(account_b.pk).ok


def test_an_edited_entry_is_named(account_a):
    entries = write(account_a, 3)
    AuditEntry.objects.filter(pk=entries[1].pk).update(actor_label="someone else")
    with pytest.raises(CommandError, match=f"Audit entry {entries[1].pk} does not match its hash"):
        verify_cmd()


def test_a_deleted_entry_breaks_the_next_link(account_a):
    entries = write(account_a, 3)
    AuditEntry.objects.filter(pk=entries[1].pk).delete()
    result = audit.verify(account_a.pk)
    assert not result.ok and result.first_bad_entry_id == entries[2].pk and "deleted or inserted" in result.message


def test_an_entry_inserted_without_a_hash_after_chained_ones_is_named(account_a):
    write(account_a, 2)
    forged = AuditEntry.objects.create(account=account_a, actor_label="x", action="forged")
    result = audit.verify(account_a.pk)
    assert not result.ok and result.first_bad_entry_id == forged.pk


def test_entries_written_before_the_chain_are_counted_not_failed(account_a):
    AuditEntry.objects.create(account=account_a, actor_label="old", action="legacy")
    write(account_a, 2)
    result = audit.verify(account_a.pk)
    assert result.ok and result.unchained == 1 and "1 older entries have no hash" in result.message


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_do_not_fork_the_chain(account_a):
    """Eight threads, each with its own database connection, audit at once: the chain stays one line."""
    errors = []

    def writer():
        try:
            write(account_a, 5)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert AuditEntry.objects.filter(account=account_a).count() == 40
    assert audit.verify(account_a.pk).ok
