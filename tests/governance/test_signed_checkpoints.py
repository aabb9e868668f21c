"""Signed checkpoints (docs/operations.md §"Signed checkpoints"): the decision-log and audit-log checkpoints are
signed with an Ed25519 key from the environment, the public keys are at a well-known URL, and the shipped offline
verifier (tools/verify_checkpoints.py, run as a subprocess) accepts an export and rejects one in which a single
decision or audit entry was altered in the database."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import rfc8785
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from billing import audit
from billing.models import AuditCheckpoint, AuditEntry
from billing.services import audit_record
from governance import ledger, partitions
from governance.models import Decision, DecisionCheckpoint
from governance.tasks import checkpoint_decisions, maintain_decision_partitions
from onceonly_site import checkpoint_signing
from tests.support.decisions import agent, decide
from tests.support.partitions import lay_out_days

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "tools" / "verify_checkpoints.py"


def load_verifier():
    spec = importlib.util.spec_from_file_location("verify_checkpoints", VERIFIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch):
    monkeypatch.setattr(ledger, "SETTLE", timedelta(0))  # chain decisions at once (30 s in production)


@pytest.fixture
def signing_key(settings):
    key = checkpoint_signing.generate()
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.private_text(key)
    settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS = []
    return key


@pytest.fixture
def decisions(key_a):
    client = key_a.client()
    for n in range(6):
        response = client.post(
            "/v1/ai/run",
            {"agent_id": "bot", "tool": "t", "args": {"n": n}, "spend_usd": 0.1},
            content_type="application/json",
        )
        assert response.status_code == 200
    return list(Decision.objects.order_by("pk"))


def export(tmp_path, name="export.json", *extra):
    path = tmp_path / name
    err = io.StringIO()
    call_command("export_checkpoints", "--out", str(path), *extra, stderr=err)
    return path, err.getvalue()


def run_verifier(*args):
    done = subprocess.run(
        [sys.executable, str(VERIFIER), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    return done.returncode, done.stdout + done.stderr


def saved_keys(client, tmp_path):
    """What an auditor keeps: the well-known document, fetched while the server was trusted."""
    path = tmp_path / "keys.json"
    path.write_bytes(client.get("/.well-known/onceonly-checkpoint-keys.json").content)
    return path


# --- signing -----------------------------------------------------------------------------------------------------


def test_checkpoints_are_signed_when_the_beat_writes_them(signing_key, decisions):
    checkpoint_decisions()
    checkpoint = DecisionCheckpoint.objects.get()
    assert checkpoint.key_id == signing_key.kid and checkpoint.signed_at == checkpoint.created_at
    assert checkpoint_signing.verify("decisions", checkpoint)
    # The audit log's head is checkpointed in the same run: the account's creation and its API key.
    entries = list(AuditEntry.objects.filter(account_id=checkpoint.account_id).order_by("pk"))
    head = AuditCheckpoint.objects.get(account_id=checkpoint.account_id)
    assert (head.seq, head.first_entry_id, head.last_entry_id, head.row_count) == (
        1,
        entries[0].pk,
        entries[-1].pk,
        len(entries),
    )
    assert head.chain_hash == entries[-1].row_hash and head.prev_hash == audit.GENESIS
    assert checkpoint_signing.verify("audit", head)
    # Nothing new: no new audit checkpoint; one new entry: one more, chained to the first.
    checkpoint_decisions()
    assert AuditCheckpoint.objects.count() == 1
    audit_record(account=checkpoint.account, action="test.something", actor_label="system")
    checkpoint_decisions()
    second = AuditCheckpoint.objects.get(seq=2)
    assert second.prev_hash == head.chain_hash and second.row_count == 1
    # A changed field fails the signature, as does a checkpoint altered in the database.
    checkpoint.row_count += 1
    assert not checkpoint_signing.verify("decisions", checkpoint)


def test_the_signed_message_is_byte_for_byte_as_documented(signing_key):
    when = timezone.now().replace(year=2025, month=6, day=1, hour=12, minute=0, second=0, microsecond=123456)
    message = checkpoint_signing.message(
        kind="decisions",
        account_id=3,
        seq=7,
        first_id=101,
        last_id=200,
        row_count=100,
        prev_hash="a" * 64,
        chain_hash="b" * 64,
        created_at=when,
        signed_at=when + timedelta(days=1),
    )
    assert message == (
        b"onceonly-checkpoint-v1\nkind:decisions\naccount:3\nseq:7\nfirst:101\nlast:200\ncount:100\n"
        + b"prev:"
        + b"a" * 64
        + b"\nhead:"
        + b"b" * 64
        + b"\ncreated:2025-06-01T12:00:00.123456Z\nsigned:2025-06-02T12:00:00.123456Z\n"
    )
    text = (ROOT / "docs" / "operations.md").read_text()
    assert "onceonly-checkpoint-v1\nkind:decisions\naccount:3\nseq:7\n" in text  # the documented example


def test_without_a_key_checkpoints_are_unsigned_and_can_be_signed_later(settings, decisions, client, tmp_path):
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = ""
    checkpoint_decisions()
    assert not DecisionCheckpoint.objects.get().signature
    path, err = export(tmp_path, "unsigned.json", "--with-rows")
    assert "No signing key is configured" in err and "have no signature" in err
    code, out = run_verifier(path)
    assert code == 1 and "checkpoint 1 is not signed" in out
    with pytest.raises(CommandError, match="No signing key is configured"):
        export(tmp_path, "x.json", "--sign-missing")

    key = checkpoint_signing.generate()
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.private_text(key)
    path, err = export(tmp_path, "signed.json", "--with-rows", "--sign-missing")
    assert "Signed 2 checkpoints that had no signature." in err  # the decisions' and the audit log's
    checkpoint = DecisionCheckpoint.objects.get()
    assert checkpoint.key_id == key.kid and checkpoint.signed_at > checkpoint.created_at
    code, out = run_verifier(path, "--keys", saved_keys(client, tmp_path))
    assert code == 0, out


def test_sign_missing_refuses_a_log_that_fails_verification(settings, decisions, tmp_path):
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = ""
    checkpoint_decisions()
    Decision.objects.filter(pk=decisions[2].pk).update(spend_usd=0)
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.private_text(checkpoint_signing.generate())
    _, err = export(tmp_path, "x.json", "--sign-missing")
    assert f"Not signed, the log fails verification: account 'Acme', decisions: Decision {decisions[2].pk}" in err
    assert not DecisionCheckpoint.objects.get().signature
    assert AuditCheckpoint.objects.get().signature  # the audit log verifies: signed


def test_a_malformed_key_is_refused_with_the_way_to_make_one():
    with pytest.raises(ImproperlyConfigured, match="checkpoint_key generate"):
        checkpoint_signing.validate("not-a-key", [])
    with pytest.raises(ImproperlyConfigured, match="ONCEONLY_CHECKPOINT_PUBLIC_KEYS"):
        checkpoint_signing.validate("", ["abc"])
    pem = (
        checkpoint_signing.generate()
        .private.private_bytes(
            checkpoint_signing.serialization.Encoding.PEM,
            checkpoint_signing.serialization.PrivateFormat.PKCS8,
            checkpoint_signing.serialization.NoEncryption(),
        )
        .decode()
    )
    assert checkpoint_signing.parse_private_key(pem).kid  # PEM works too


def test_the_dev_key_is_generated_once(tmp_path):
    path = tmp_path / "dev-checkpoint-signing-key"
    first = checkpoint_signing.dev_key(path)
    assert checkpoint_signing.dev_key(path) == first and path.stat().st_mode & 0o777 == 0o600
    assert checkpoint_signing.parse_private_key(first).kid


# --- the well-known URL ------------------------------------------------------------------------------------------


def test_the_public_keys_are_at_a_well_known_url_without_login(settings, client, signing_key):
    retired = checkpoint_signing.generate()
    settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS = [retired.x]
    response = client.get("/.well-known/onceonly-checkpoint-keys.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "public, max-age=3600"
    assert response.json() == {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": signing_key.kid, "x": signing_key.x},
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": retired.kid, "x": retired.x},
        ]
    }
    assert client.post("/.well-known/onceonly-checkpoint-keys.json").status_code == 405
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = ""
    settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS = []
    assert client.get("/.well-known/onceonly-checkpoint-keys.json").json() == {"keys": []}


# --- the acceptance: export, verify offline, alter one decision, rejected ----------------------------------------


def test_the_verifier_accepts_an_export_and_rejects_a_single_altered_decision(signing_key, decisions, client, tmp_path):
    checkpoint_decisions()
    keys = saved_keys(client, tmp_path)
    good, _ = export(tmp_path, "good.json", "--with-rows")
    code, out = run_verifier(good, "--keys", keys)
    assert code == 0, out
    assert f"account {decisions[0].account_id} (Acme) decisions: 1 checkpoint(s), 6 row(s) checked" in out
    assert "OK: every checkpoint is signed by a trusted key" in out

    # Someone with database access turns a blocked/allowed call's outcome and hides its charge.
    victim = decisions[3]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE governance_decision SET outcome = %s, spend_usd = 0 WHERE id = %s", ["blocked", victim.pk]
        )
    bad, _ = export(tmp_path, "bad.json", "--with-rows")
    code, out = run_verifier(bad, "--keys", keys)
    assert code == 1, out
    assert (
        f"REJECTED: account {victim.account_id} (Acme) decisions: decision {victim.pk} does not match its row hash"
        in out
    )


def test_a_rehashed_edit_fails_the_signature_and_an_anchor_names_the_decision(signing_key, decisions, client, tmp_path):
    checkpoint_decisions()
    keys = saved_keys(client, tmp_path)
    anchor, _ = export(tmp_path, "anchor.json", "--with-rows")
    # A careful attacker recomputes the row hash, then the checkpoint's chain hash, in the database.
    victim = decisions[2]
    Decision.objects.filter(pk=victim.pk).update(outcome="blocked")
    row = Decision.objects.select_related("agent").get(pk=victim.pk)
    fields = ledger._row_fields(row)
    fields["agent_id"] = row.agent.agent_id
    Decision.objects.filter(pk=victim.pk).update(row_hash=ledger.row_hash(row.account_id, fields))
    code, out = run_verifier(export(tmp_path, "a.json", "--with-rows")[0], "--keys", keys)
    assert code == 1 and "checkpoint 1: decisions " in out and "do not hash to its signed chain hash" in out, out
    checkpoint = DecisionCheckpoint.objects.get()
    digest = ledger.hashlib.sha256(checkpoint.prev_hash.encode())
    for value in Decision.objects.order_by("pk").values_list("row_hash", flat=True):
        digest.update(value.encode())
    DecisionCheckpoint.objects.filter(pk=checkpoint.pk).update(chain_hash=digest.hexdigest())
    assert ledger.verify(victim.account_id).ok  # inside the database, nothing shows any more
    tampered, _ = export(tmp_path, "b.json", "--with-rows")
    code, out = run_verifier(tampered, "--keys", keys)
    assert code == 1 and "checkpoint 1: the signature does not verify" in out, out
    code, out = run_verifier(tampered, "--keys", keys, "--anchor", anchor)
    assert code == 1 and f"decision {victim.pk} was changed since {anchor}" in out, out


def test_an_altered_audit_entry_is_rejected(signing_key, decisions, client, tmp_path):
    checkpoint_decisions()
    keys = saved_keys(client, tmp_path)
    assert run_verifier(export(tmp_path, "good.json", "--with-rows", "--kind", "audit")[0], "--keys", keys)[0] == 0
    entry = AuditEntry.objects.filter(action="billing.api_key.created").get()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE billing_auditentry SET actor_label = %s WHERE id = %s", ["someone else", entry.pk])
    path, _ = export(tmp_path, "bad.json", "--with-rows", "--kind", "audit")
    code, out = run_verifier(path, "--keys", keys)
    assert code == 1 and f"audit entry {entry.pk} does not match its row hash" in out, out
    # Re-hashing it and every later entry moves the chain's head away from the signed one.
    prev = entry.prev_hash
    for later in AuditEntry.objects.filter(account_id=entry.account_id, pk__gte=entry.pk).order_by("pk"):
        fields = {name: getattr(later, name) for name in audit.FIELDS}
        new = audit.entry_hash(later.account_id, prev, later.created_at, fields)
        AuditEntry.objects.filter(pk=later.pk).update(prev_hash=prev, row_hash=new)
        prev = new
    assert audit.verify(entry.account_id).ok
    code, out = run_verifier(export(tmp_path, "c.json", "--with-rows", "--kind", "audit")[0], "--keys", keys)
    assert code == 1 and "is not the signed head of the chain" in out, out


def test_a_tampered_file_or_an_unknown_key_is_rejected(signing_key, decisions, client, tmp_path):
    checkpoint_decisions()
    keys = saved_keys(client, tmp_path)
    path, _ = export(tmp_path)
    data = json.loads(path.read_text())
    checkpoint = data["accounts"][0]["decisions"]["checkpoints"][0]
    signature = checkpoint["signature"]
    checkpoint["signature"] = ("A" if signature[0] != "A" else "B") + signature[1:]
    (tmp_path / "sig.json").write_text(json.dumps(data))
    code, out = run_verifier(tmp_path / "sig.json", "--keys", keys)
    assert code == 1 and "checkpoint 1: the signature does not verify" in out
    checkpoint["signature"] = signature
    checkpoint["row_count"] += 1  # the file edited instead of the database
    (tmp_path / "count.json").write_text(json.dumps(data))
    assert "the signature does not verify" in run_verifier(tmp_path / "count.json", "--keys", keys)[1]

    # Keys from another server: the signatures name a key the auditor does not trust.
    other = tmp_path / "other-keys.json"
    other.write_text(json.dumps({"keys": [checkpoint_signing.jwk(checkpoint_signing.generate().x)]}))
    code, out = run_verifier(path, "--keys", other)
    assert code == 1 and f"is signed by key '{signing_key.kid}', which is not among the trusted keys" in out
    # A published key whose kid is not its thumbprint makes the key file unusable.
    wrong = json.loads(keys.read_text())
    kid = wrong["keys"][0]["kid"]
    wrong["keys"][0]["kid"] = ("x" if kid[0] != "x" else "y") + kid[1:]
    other.write_text(json.dumps(wrong))
    assert run_verifier(path, "--keys", other)[0] == 2
    # No --keys: the file's own keys, with a warning.
    code, out = run_verifier(path)
    assert code == 0 and "trusting the keys inside the export itself" in out


def test_deleting_the_newest_checkpoint_with_its_decisions_shows_against_an_anchor(
    signing_key, key_a, decisions, client, tmp_path
):
    checkpoint_decisions()
    key_a.client().post("/v1/ai/run", {"agent_id": "bot", "tool": "t", "args": {}}, content_type="application/json")
    checkpoint_decisions()
    keys = saved_keys(client, tmp_path)
    anchor, _ = export(tmp_path, "anchor.json", "--kind", "decisions")
    newest = DecisionCheckpoint.objects.get(seq=2)
    Decision.objects.filter(pk__gte=newest.first_decision_id).delete()
    newest.delete()
    path, _ = export(tmp_path, "now.json", "--with-rows", "--kind", "decisions")
    assert run_verifier(path, "--keys", keys)[0] == 0  # alone, the shortened log is consistent
    code, out = run_verifier(path, "--keys", keys, "--anchor", anchor)
    assert code == 1 and f"checkpoint 2 of {anchor} is missing or different now" in out


# --- after retention dropped days of the decision log (docs/operations.md §"Decision-log partitions") -------------


def hashed(made: list[Decision]) -> None:
    for decision in Decision.objects.filter(pk__in=[d.pk for d in made]).select_related("agent"):
        fields = ledger._row_fields(decision)
        fields["agent_id"] = decision.agent.agent_id
        Decision.objects.filter(pk=decision.pk).update(row_hash=ledger.row_hash(decision.account_id, fields))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="retention drops PostgreSQL's day partitions")
def test_checkpoints_whose_decisions_retention_dropped_verify_offline_as_archived(
    signing_key, account_a, client, tmp_path, settings
):
    # Six days of decisions, each day checkpointed (and signed) five minutes after it ended, as beat does; each
    # checkpoint also chains the next day's 00:01 decision (tests/governance/test_decision_retention.py, history).
    today = lay_out_days(back=30)
    bot = agent(account_a, "bot")
    for n in range(6, 0, -1):
        day = today - timedelta(days=n)
        made = decide(bot, ts=day + timedelta(hours=12), n=3, spend="0.5")
        hashed(made + decide(bot, ts=day + timedelta(days=1, minutes=1), spend="0.5"))
        checkpoint = ledger.checkpoint_account(account_a.pk)
        checkpoint.created_at = day + timedelta(days=1, minutes=5)
        checkpoint_signing.sign("decisions", checkpoint)
        checkpoint.save(update_fields=["created_at", "signed_at", "key_id", "signature"])
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no table is dropped with deferred checks pending
    keys = saved_keys(client, tmp_path)
    anchor, _ = export(tmp_path, "before.json", "--with-rows")
    assert json.loads(anchor.read_text())["decisions_dropped_before"] is None

    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    horizon = partitions.horizon()
    assert horizon == today - timedelta(days=3) and ledger.verify(account_a.pk).archived == 3
    path, _ = export(tmp_path, "after.json", "--with-rows")
    data = json.loads(path.read_text())
    dropped = checkpoint_signing.utc_text(horizon)
    assert data["decisions_dropped_before"] == dropped and data["archive_margin_seconds"] == 86400
    assert len(data["accounts"][0]["decisions"]["rows"]) == 3 * 4 + 1
    # Checkpoints 1–3 were made before the horizon plus a day and lack decisions (3 has kept its 00:01 one).
    code, out = run_verifier(path, "--keys", keys, "--anchor", anchor)
    assert code == 0, out
    where = f"account {account_a.pk} (Acme) decisions"
    assert (
        f"{where}: 3 checkpoint(s) archived (decisions dropped by retention before {dropped}): seq 1–3, their 1 kept "
        "decision(s) checked by their row hashes" in out
    ), out
    assert f"{where}: 11 decision(s) of {anchor} from before {dropped} were dropped by retention" in out
    assert f"3 checkpoint(s) archived (decisions dropped by retention before {dropped})." in out.splitlines()[-1]

    # An export without the horizon (an older server's): the dropped decisions are deletions, as before.
    del data["decisions_dropped_before"], data["archive_margin_seconds"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    code, out = run_verifier(tmp_path / "old.json", "--keys", keys)
    assert code == 1 and "archived" not in out, out
    for seq in (1, 2, 3):
        assert f"{where}: checkpoint {seq} covers 4 decisions" in out and "decisions were deleted or inserted" in out

    # A kept decision of an archived checkpoint changed, one of a later checkpoint deleted: both are rejected.
    kept = Decision.objects.get(account=account_a, ts=horizon + timedelta(minutes=1))
    Decision.objects.filter(pk=kept.pk).update(spend_usd=0)
    gone = Decision.objects.filter(account=account_a, ts=today - timedelta(hours=12)).first()  # the last day's
    Decision.objects.filter(pk=gone.pk).delete()
    code, out = run_verifier(export(tmp_path, "tampered.json", "--with-rows")[0], "--keys", keys)
    assert code == 1, out
    assert f"REJECTED: {where}: decision {kept.pk} does not match its row hash" in out
    assert f"REJECTED: {where}: checkpoint 6 covers 4 decisions" in out and "decisions were deleted or inserted" in out
    assert f"REJECTED: {where}: checkpoint 3" not in out  # still archived: the change shows by the row hash


def test_key_rotation_keeps_old_signatures_verifiable(settings, decisions, key_a, client, tmp_path):
    old = checkpoint_signing.generate()
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.private_text(old)
    checkpoint_decisions()
    new = checkpoint_signing.generate()
    settings.ONCEONLY_CHECKPOINT_SIGNING_KEY = checkpoint_signing.private_text(new)
    settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS = [old.x]
    key_a.client().post("/v1/ai/run", {"agent_id": "bot", "tool": "t", "args": {}}, content_type="application/json")
    checkpoint_decisions()
    assert [c.key_id for c in DecisionCheckpoint.objects.order_by("seq")] == [old.kid, new.kid]
    keys = saved_keys(client, tmp_path)
    assert [k["kid"] for k in json.loads(keys.read_text())["keys"]] == [new.kid, old.kid]
    path, err = export(tmp_path, "rotated.json", "--with-rows")
    assert "no longer published" not in err
    code, out = run_verifier(path, "--keys", keys)
    assert code == 0, out
    listing = io.StringIO()
    call_command("checkpoint_key", "list", stdout=listing)
    lines = listing.getvalue().splitlines()
    assert lines[0].startswith(f"{new.kid}  current") and "signed 1 checkpoint" in lines[0]  # no new audit entry
    assert lines[1].startswith(f"{old.kid}  retired") and "signed 2 checkpoints" in lines[1]  # decisions + audit

    # The old public key forgotten: its signatures can no longer be checked, and both tools say so.
    settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS = []
    path, err = export(tmp_path, "forgotten.json")
    assert "signed by a key that is no longer published" in err
    code, out = run_verifier(path)
    assert code == 1 and f"signed by key '{old.kid}', which is not among the trusted keys" in out
    listing = io.StringIO()
    call_command("checkpoint_key", "list", stdout=listing)
    assert f"{old.kid}  UNPUBLISHED: signed 2 checkpoints" in listing.getvalue()


def test_checkpoint_key_generate_prints_a_usable_key():
    out = io.StringIO()
    call_command("checkpoint_key", "generate", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if line.startswith("ONCEONLY_CHECKPOINT_SIGNING_KEY="))
    key = checkpoint_signing.parse_private_key(line.split("=", 1)[1])
    assert f"# key id:     {key.kid}" in out.getvalue() and f"# public key: {key.x}" in out.getvalue()


# --- the verifier's hashes are the server's ------------------------------------------------------------------------


TRICKY = {
    # Not 1e21 and the like: PostgreSQL's jsonb reads them back as integers beyond JSON's exact range.
    "floats": [0.1, 1e-7, 1.5e-7, 5.0, -0.0, 1e15, 2.5e-5, 3.14159, -1e-300],
    "ints": [0, -1, 2**53 - 1, -(2**53) + 1],
    "text": 'naïve ☃ \U0001f600 \u2028 \x01\x1f\x7f "quoted" back\\slash',
    "keys": {"é": 1, "\U0001f600": 2, "\uffff": 3, "a": 4, "B": 5},
    "nested": [{"z": None, "y": True, "x": False}],
}


def test_the_verifiers_row_hash_is_the_servers_for_real_rows(signing_key, decisions, key_a, tmp_path):
    verifier = load_verifier()
    # Rows with everything the hash covers set, and tool results a canonical form can get wrong.
    first, second = decisions[0], decisions[1]
    Decision.objects.filter(pk=first.pk).update(
        result=TRICKY,
        explain={"rule": "spend", "limit": 0.3, "seen": [1.25, "€"]},
        declared_spend_usd=Decimal("0.1"),
        operator_price_usd=Decimal("12.345678"),
        policy_version=3,
        run_id="run-é",
        api_key_id=key_a.api_key.pk,
    )
    Decision.objects.filter(pk=second.pk).update(result=[1e-7, "x"], spend_usd=Decimal("123456.5"))
    for pk in (first.pk, second.pk):  # rehash as the server would have when writing them
        row = Decision.objects.select_related("agent").get(pk=pk)
        fields = ledger._row_fields(row)
        fields["agent_id"] = row.agent.agent_id
        Decision.objects.filter(pk=pk).update(row_hash=ledger.row_hash(row.account_id, fields))
    # (-0.0 left out of the audit entry: PostgreSQL's numeric has no negative zero, and the audit hash is plain JSON.)
    data = {**TRICKY, "floats": [value for value in TRICKY["floats"] if value != 0]}
    audit_record(account=first.account, action="test.tricky", actor_label="ü", data=data)
    assert ledger.verify(first.account_id).ok and audit.verify(first.account_id).ok
    path, _ = export(tmp_path, "rows.json", "--with-rows")
    account = json.loads(path.read_text())["accounts"][0]
    assert len(account["decisions"]["rows"]) == 6
    for row in account["decisions"]["rows"]:
        assert verifier.decision_hash(account["account_id"], row) == row["row_hash"], row["id"]
    assert len(account["audit"]["rows"]) >= 3
    for row in account["audit"]["rows"]:
        assert verifier.audit_hash(account["account_id"], row) == row["row_hash"], row["id"]


def test_the_verifiers_canonical_json_is_rfc8785s():
    verifier = load_verifier()
    numbers = random.Random(8785)
    values = [numbers.uniform(-1e6, 1e6) for _ in range(2000)]
    values += [numbers.random() * 10 ** numbers.randint(-30, 30) for _ in range(2000)]
    values += [float(n) for n in range(-50, 50)] + [5e-324, 1.7976931348623157e308, 1e20, 1e21, 1e-6, 1e-7]
    for value in values:
        assert verifier.jcs(value) == rfc8785.dumps(value).decode(), value
    assert verifier.jcs(TRICKY) == rfc8785.dumps(TRICKY).decode()
    with pytest.raises(ValueError):
        verifier.jcs(2**53)  # as rfc8785 refuses it
