#!/usr/bin/env python3
"""Verify an OnceOnly Server checkpoint export offline (docs/operations.md §"Signed checkpoints").

    python verify_checkpoints.py EXPORT.json [--keys KEYS.json] [--anchor OLDER-EXPORT.json ...]

EXPORT.json is written by ``manage.py export_checkpoints --out FILE`` (``--with-rows`` to recompute the chains from
the rows). KEYS.json is the server's ``/.well-known/onceonly-checkpoint-keys.json``, saved by the auditor at a time
the server was trusted; without it the keys inside the export are used, which proves only that the file is
consistent with itself. Each ``--anchor`` is an earlier export the auditor kept: every signed checkpoint in it must
still be in EXPORT.json, unchanged (so removing the newest checkpoints, or a restore, shows), and with rows in both,
a decision whose row hash changed since is named.

Checks, for every account and log ("decisions", "audit"):
- every checkpoint is signed (Ed25519) by a trusted key, over the documented message;
- the checkpoints chain: sequence numbers 1, 2, 3…, each ``prev_hash`` is the previous ``chain_hash``;
- with rows: every row's hash is recomputed from its fields; each decision checkpoint's ``chain_hash`` is
  recomputed from the rows' hashes in its id range and compared with the signed one; each audit checkpoint's
  ``chain_hash`` must be the hash of its last entry, and the entries must link to each other;
- after retention dropped days of the decision log (the export's ``decisions_dropped_before``): a decision
  checkpoint made (``created_at``, signed) before that horizon plus ``archive_margin_seconds`` that has fewer rows in
  its range than its ``row_count`` is *archived*, not rejected: its signature and its place in the chain are checked,
  its kept rows by their row hashes, and its chain hash is taken as signed (a decision deleted from it does not
  show). The horizon itself is not signed. Without the field (an older export) nothing is archived.

Exit status: 0 verified, 1 rejected (each problem printed), 2 unusable input. Needs Python 3.11+ and the
``cryptography`` package, nothing of the server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "onceonly-checkpoints/1"
GENESIS = "0" * 64
KINDS = ("decisions", "audit")
# The hashed fields of a decision, always present in its hash (nulls included).
DECISION_FIELDS = (
    "ts",
    "agent_id",
    "tool",
    "outcome",
    "allowed",
    "policy_reason",
    "risk_level",
    "spend_usd",
    "args_hash",
    "run_id",
    "policy_version",
    "latency_ms",
    "result",
)
DECISION_AMOUNTS = ("declared_spend_usd", "operator_price_usd")  # hashed when not null, with 6 decimal places
AUDIT_FIELDS = ("actor_label", "action", "object_type", "object_id", "data")


class Unusable(Exception):
    """The input cannot be checked at all (exit status 2)."""


# --- RFC 8785 (JSON Canonicalization Scheme): the canonical form of a decision's hashed fields ---------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _jcs_string(text: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), text) + '"'


def _jcs_number(value: float) -> str:
    """ECMAScript's Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON form")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + _jcs_number(-value)
    _, digits_tuple, exponent = Decimal(repr(value)).as_tuple()  # repr: the shortest digits that round-trip
    digits = "".join(map(str, digits_tuple)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    k = len(digits)
    n = exponent + len("".join(map(str, digits_tuple)))  # the decimal point's position: value = 0.digits × 10^n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def jcs(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ValueError(f"{value} is outside JSON's exact integers")
        return str(value)
    if isinstance(value, float):
        return _jcs_number(value)
    if isinstance(value, str):
        return _jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))  # RFC 8785: by UTF-16 code units
        return "{" + ",".join(_jcs_string(key) + ":" + jcs(value[key]) for key in keys) + "}"
    raise ValueError(f"{type(value).__name__} has no JSON form")


# --- row hashes --------------------------------------------------------------------------------------------------


def _iso(text: str) -> str:
    """A timestamp as the server hashes it: ISO 8601 with microseconds and its UTC offset."""
    return datetime.fromisoformat(text).isoformat(timespec="microseconds")


def _amount(text: Any) -> str:
    return f"{Decimal(str(text)):.6f}"


def decision_hash(account_id: int, row: dict[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 form of the decision's hashed fields and its account id."""
    payload: dict[str, Any] = {"account_id": account_id}
    for name in DECISION_FIELDS:
        payload[name] = row.get(name)
    payload["ts"] = _iso(row["ts"])
    payload["spend_usd"] = _amount(row["spend_usd"])
    if row.get("api_key_id") is not None:
        payload["api_key_id"] = row["api_key_id"]
    for name in DECISION_AMOUNTS:
        if row.get(name) is not None:
            payload[name] = _amount(row[name])
    if row.get("explain") is not None:
        payload["explain"] = row["explain"]
    return hashlib.sha256(jcs(payload).encode("utf-8")).hexdigest()


def audit_hash(account_id: int, row: dict[str, Any]) -> str:
    """SHA-256 (hex) of the sorted, compact JSON of the entry's fields, its time, its account and prev_hash."""
    payload = {
        "account_id": account_id,
        "prev_hash": row["prev_hash"],
        "created_at": _iso(row["created_at"]),
        **{name: row.get(name) for name in AUDIT_FIELDS},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- signatures --------------------------------------------------------------------------------------------------


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(x: str) -> str:
    """RFC 7638 thumbprint of an Ed25519 JWK."""
    members = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def load_keys(document: dict[str, Any], where: str) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in document.get("keys") or []:
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        x = entry.get("x", "")
        if entry.get("kid") != key_id(x):
            raise Unusable(f"{where}: key {entry.get('kid')!r} does not match its public key's thumbprint")
        keys[entry["kid"]] = Ed25519PublicKey.from_public_bytes(_b64url_decode(x))
    return keys


def _utc(text: str) -> str:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signed_message(kind: str, account_id: int, cp: dict[str, Any]) -> bytes:
    lines = [
        "onceonly-checkpoint-v1",
        f"kind:{kind}",
        f"account:{account_id}",
        f"seq:{cp['seq']}",
        f"first:{cp['first_id']}",
        f"last:{cp['last_id']}",
        f"count:{cp['row_count']}",
        f"prev:{cp['prev_hash']}",
        f"head:{cp['chain_hash']}",
        f"created:{_utc(cp['created_at'])}",
        f"signed:{_utc(cp['signed_at'])}",
    ]
    return "".join(line + "\n" for line in lines).encode("ascii")


# --- the checks --------------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.rows_checked = False
        self.archived = 0  # decision checkpoints whose decisions retention dropped (some or all)
        self.dropped_before: str | None = None  # the export's horizon, as written

    def fail(self, text: str) -> None:
        self.problems.append(text)


def check_signatures(
    report: Report, where: str, kind: str, account_id: int, checkpoints: list[dict[str, Any]], keys: dict
) -> None:
    prev, last_id = GENESIS, 0
    for expected_seq, cp in enumerate(checkpoints, start=1):
        name = f"{where}: checkpoint {cp.get('seq')}"
        if cp.get("seq") != expected_seq:
            report.fail(f"{name}: expected sequence number {expected_seq}: a checkpoint is missing")
        if not cp.get("signature") or not cp.get("signed_at"):
            report.fail(f"{name} is not signed")
        elif cp.get("kid") not in keys:
            report.fail(f"{name} is signed by key {cp.get('kid')!r}, which is not among the trusted keys")
        else:
            try:
                keys[cp["kid"]].verify(_b64url_decode(cp["signature"]), signed_message(kind, account_id, cp))
            except (InvalidSignature, ValueError):
                report.fail(f"{name}: the signature does not verify: the checkpoint was changed after it was signed")
        if cp.get("prev_hash") != prev:
            report.fail(f"{name} does not follow the checkpoint before it (prev_hash)")
        if cp.get("first_id", 0) <= last_id:
            report.fail(f"{name}: its range overlaps the previous checkpoint's")
        prev, last_id = cp.get("chain_hash"), cp.get("last_id", 0)


def _ranges(checkpoints: list[dict[str, Any]], rows: list[dict[str, Any]]):
    """Each checkpoint with the rows of (previous last_id, last_id]; then the rows after the last checkpoint."""
    index, after = 0, 0
    for cp in checkpoints:
        start = index
        while index < len(rows) and rows[index]["id"] <= cp["last_id"]:
            index += 1
        yield cp, after, rows[start:index]
        after = cp["last_id"]
    yield None, after, rows[index:]


def _instant(text: Any, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise Unusable(f"{what} is not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise Unusable(f"{what} has no UTC offset: {text!r}")
    return value


def archivable_before(export: dict[str, Any]) -> datetime | None:
    """The moment before which a decision checkpoint may lack decisions retention dropped: the export's horizon plus
    its margin (a day); None when the export names no horizon (nothing dropped, or an export from before the field)."""
    dropped = export.get("decisions_dropped_before")
    if dropped is None:
        return None
    margin = export.get("archive_margin_seconds", 86400)
    if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
        raise Unusable(f"archive_margin_seconds is not a number of seconds: {margin!r}")
    return _instant(dropped, "decisions_dropped_before") + timedelta(seconds=margin)


def check_decision_rows(report, where, account_id, checkpoints, rows, archivable=None) -> None:
    for row in rows:
        try:
            recomputed = decision_hash(account_id, row)
        except (KeyError, TypeError, ValueError) as exc:
            report.fail(f"{where}: decision {row.get('id')} cannot be hashed ({exc})")
            continue
        if recomputed != row.get("row_hash"):
            report.fail(
                f"{where}: decision {row['id']} does not match its row hash: it was changed after it was written"
            )
    archived: list[tuple[int, int]] = []  # (seq, rows kept)
    for cp, after, covered in _ranges(checkpoints, rows):
        if cp is None:
            if covered:
                report.notes.append(
                    f"{where}: {len(covered)} decision(s) after the last checkpoint (ids {covered[0]['id']}–"
                    f"{covered[-1]['id']}) are not covered by a signature yet"
                )
            continue
        digest = hashlib.sha256(cp["prev_hash"].encode())
        for row in covered:
            digest.update(str(row.get("row_hash")).encode())
        span = f"decisions {after + 1}–{cp['last_id']}"
        if (
            archivable is not None
            and len(covered) < cp["row_count"]
            and _instant(cp["created_at"], f"{where}: checkpoint {cp['seq']}: created_at") < archivable
        ):
            # Retention dropped decisions it chained: kept ones were checked by their row hashes above; its chain
            # hash stands as signed, and check_signatures checked that it follows the one before and is followed.
            archived.append((cp["seq"], len(covered)))
            continue
        if len(covered) != cp["row_count"] or (covered and covered[0]["id"] != cp["first_id"]):
            report.fail(
                f"{where}: checkpoint {cp['seq']} covers {cp['row_count']} decisions from {cp['first_id']}, but the "
                f"export has {len(covered)} in {span}: decisions were deleted or inserted"
            )
        elif digest.hexdigest() != cp["chain_hash"]:
            report.fail(
                f"{where}: checkpoint {cp['seq']}: {span} do not hash to its signed chain hash: a decision in "
                "the range was changed (and its row hash recomputed), deleted or inserted"
            )
    if archived:
        report.archived += len(archived)
        seqs = f"{archived[0][0]}" if len(archived) == 1 else f"{archived[0][0]}–{archived[-1][0]}"
        report.notes.append(
            f"{where}: {len(archived)} checkpoint(s) archived (decisions dropped by retention before "
            f"{report.dropped_before}): seq {seqs}, their {sum(kept for _, kept in archived)} kept decision(s) "
            "checked by their row hashes, their chain hashes taken as signed"
        )


def check_audit_rows(report, where, account_id, checkpoints, rows) -> None:
    prev: str | None = None  # the previous chained entry's hash; None before the first
    for row in rows:
        if not row.get("row_hash"):
            if prev is not None:
                report.fail(f"{where}: audit entry {row['id']} has no hash but follows chained entries")
            continue
        if audit_hash(account_id, row) != row["row_hash"]:
            report.fail(
                f"{where}: audit entry {row['id']} does not match its row hash: it was changed after it was written"
            )
        if row.get("prev_hash") != (prev or GENESIS):
            report.fail(f"{where}: audit entry {row['id']} does not follow the entry before it")
        prev = row["row_hash"]
    chained = [row for row in rows if row.get("row_hash")]
    for cp, _after, covered in _ranges(checkpoints, chained):
        if cp is None:
            if covered:
                report.notes.append(
                    f"{where}: {len(covered)} audit entr(ies) after the last checkpoint are not covered by a "
                    "signature yet"
                )
            continue
        last = covered[-1] if covered else None
        if len(covered) != cp["row_count"] or last is None or last["id"] != cp["last_id"]:
            report.fail(
                f"{where}: checkpoint {cp['seq']} covers {cp['row_count']} audit entries up to {cp['last_id']}, but "
                f"the export has {len(covered)}: entries were deleted or inserted"
            )
        elif last["row_hash"] != cp["chain_hash"]:
            report.fail(
                f"{where}: checkpoint {cp['seq']}: audit entry {cp['last_id']} is not the signed head of the chain: "
                "entries up to it were changed and re-hashed"
            )


def check_anchor(report, anchor, export, anchor_name) -> None:
    """Every signed checkpoint of the older export is still there, unchanged; and so are its rows' hashes. A decision
    of a day retention dropped since (its ``ts`` in the older export before this export's horizon) may be gone."""
    current = {account["account_id"]: account for account in export["accounts"]}
    dropped = export.get("decisions_dropped_before")
    horizon = _instant(dropped, "decisions_dropped_before") if dropped is not None else None
    for old in anchor.get("accounts", []):
        new = current.get(old["account_id"])
        for kind in KINDS:
            if kind not in old:
                continue
            where = f"account {old['account_id']} ({old.get('account')}) {kind}"
            if new is None or kind not in new:
                report.fail(f"{where}: in {anchor_name} but not in this export")
                continue
            now = {cp["seq"]: cp for cp in new[kind]["checkpoints"]}
            for cp in old[kind]["checkpoints"]:
                if cp.get("signature") and now.get(cp["seq"]) != cp:
                    report.fail(f"{where}: checkpoint {cp['seq']} of {anchor_name} is missing or different now")
            old_rows, new_rows = old[kind].get("rows"), new[kind].get("rows")
            if old_rows is None or new_rows is None or not old[kind]["checkpoints"]:
                continue
            covered = old[kind]["checkpoints"][-1]["last_id"]
            hashes = {row["id"]: row.get("row_hash") for row in new_rows}
            retired = 0
            for row in old_rows:
                if row["id"] <= covered and hashes.get(row["id"]) != row.get("row_hash"):
                    if (
                        kind == "decisions"
                        and horizon is not None
                        and row["id"] not in hashes
                        and _instant(row["ts"], f"{where}: decision {row['id']}: ts") < horizon
                    ):
                        retired += 1
                        continue
                    noun = "decision" if kind == "decisions" else "audit entry"
                    state = "was deleted" if row["id"] not in hashes else "was changed"
                    report.fail(f"{where}: {noun} {row['id']} {state} since {anchor_name}")
            if retired:
                report.notes.append(
                    f"{where}: {retired} decision(s) of {anchor_name} from before {dropped} were dropped by retention"
                )


def verify(export: dict[str, Any], keys: dict, anchors: list[tuple[str, dict[str, Any]]]) -> Report:
    report = Report()
    if export.get("format") != FORMAT:
        raise Unusable(f"not an export of format {FORMAT}: {export.get('format')!r}")
    archivable = archivable_before(export)
    report.dropped_before = export.get("decisions_dropped_before")
    if archivable is not None:
        horizon = _instant(report.dropped_before, "decisions_dropped_before")
        if "exported_at" in export and horizon > _instant(export["exported_at"], "exported_at"):
            report.fail(f"decisions_dropped_before ({report.dropped_before}) is after the export was made")
        report.notes.append(
            f"retention dropped the decisions before {report.dropped_before} (as the export states; not signed): "
            f"a decision checkpoint made before {_utc(archivable.isoformat())} may lack them"
        )
    for account in export.get("accounts", []):
        account_id = account["account_id"]
        for kind in KINDS:
            if kind not in account:
                continue
            where = f"account {account_id} ({account.get('account')}) {kind}"
            log = account[kind]
            checkpoints = log.get("checkpoints", [])
            check_signatures(report, where, kind, account_id, checkpoints, keys)
            rows = log.get("rows")
            if rows is None:
                continue
            rows = sorted(rows, key=lambda row: row["id"])
            report.rows_checked = True
            if kind == "decisions":
                check_decision_rows(report, where, account_id, checkpoints, rows, archivable)
            else:
                check_audit_rows(report, where, account_id, checkpoints, rows)
            report.notes.append(f"{where}: {len(checkpoints)} checkpoint(s), {len(rows)} row(s) checked")
    for name, anchor in anchors:
        check_anchor(report, anchor, export, name)
    return report


def _load(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Unusable(f"{path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="the file export_checkpoints wrote")
    parser.add_argument("--keys", help="the trusted public keys: a saved /.well-known/onceonly-checkpoint-keys.json")
    parser.add_argument("--anchor", action="append", default=[], help="an earlier export kept by the auditor")
    args = parser.parse_args(argv)
    try:
        export = _load(args.export)
        if args.keys:
            keys = load_keys(_load(args.keys), args.keys)
        else:
            keys = load_keys(export, args.export)
            print("note: trusting the keys inside the export itself; pass --keys with the server's published keys")
        anchors = [(path, _load(path)) for path in args.anchor]
        report = verify(export, keys, anchors)
    except (Unusable, KeyError, TypeError) as exc:
        print(f"UNUSABLE: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    if report.problems:
        for problem in report.problems:
            print(f"REJECTED: {problem}")
        return 1
    if report.archived:
        print(
            f"OK: every checkpoint is signed by a trusted key and matches the exported rows; {report.archived} "
            f"checkpoint(s) archived (decisions dropped by retention before {report.dropped_before})."
        )
    elif report.rows_checked:
        print("OK: every checkpoint is signed by a trusted key and matches the exported rows.")
    else:
        print("OK: every checkpoint is signed by a trusted key (no rows in the export: export with --with-rows to")
        print("    recompute the chains from the rows).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
